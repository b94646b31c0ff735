// The todo service in a real browser (headless Chromium driven by playwright-core), as
// a person would use it:
//
//   1. /swagger/: "Try it out" on POST /v1/auth/register, then "Authorize" with a
//      bearer token and "Try it out" on GET /v1/workspaces; both answer as documented.
//   2. /: the live page signs in, adds a todo through its form, and shows the
//      workspace's events from /ws, including changes made elsewhere.
//
// Usage: node scripts/todo-browser.mjs BASE_URL ARTIFACT_DIR
// PLATFORM_TEST_PLAYWRIGHT_BIN names playwright-core's cli.js (scripts/start-services
// installs it); PLATFORM_TEST_CHROMIUM_BIN the browser. Prints one JSON line per
// stage; after {"stage":"live",...} it waits for a todo titled "made elsewhere" (the
// caller creates it) and for the page's own todo to be completed (the caller completes
// it), then takes the last screenshot. Exits non-zero on any failure.
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error("usage: node todo-browser.mjs BASE_URL ARTIFACT_DIR");
  process.exit(2);
}
const require = createRequire(process.env.PLATFORM_TEST_PLAYWRIGHT_BIN);
const { chromium } = require("playwright-core");
mkdirSync(artifacts, { recursive: true });
const report = (o) => console.log(JSON.stringify(o));
const email = `browser-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
const password = "correct horse battery";

const browser = await chromium.launch({
  executablePath: process.env.PLATFORM_TEST_CHROMIUM_BIN || "/usr/bin/chromium",
  headless: true,
  // playwright-core gives each launch a fresh profile directory of its own.
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(30000);
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));

  // 1. Swagger UI.
  await page.goto(`${base}/swagger/`);
  const op = (method, path) => page.locator(`.opblock-${method}:has(.opblock-summary-path[data-path="${path}"])`).first();
  const tryIt = async (block, body) => {
    await block.locator(".opblock-summary").first().click();
    await block.getByRole("button", { name: "Try it out" }).click();
    if (body !== undefined) await block.locator("textarea.body-param__text").fill(JSON.stringify(body));
    await block.getByRole("button", { name: "Execute" }).click();
    const status = block.locator(".live-responses-table .response .response-col_status").first();
    await status.waitFor();
    return (await status.innerText()).trim();
  };
  const register = op("post", "/v1/auth/register");
  const registered = await tryIt(register, { email, password });
  if (!registered.startsWith("201")) throw new Error(`register in Swagger UI answered ${registered}`);
  await register.screenshot({ path: `${artifacts}/todo-swagger-try-it-out.png` });
  report({ stage: "swagger-register", status: Number.parseInt(registered, 10) });

  const login = await fetch(`${base}/v1/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password }),
  });
  const { access_token: token } = await login.json();
  await page.locator(".auth-wrapper .authorize").first().click();
  const dialog = page.locator(".modal-ux");
  await dialog.locator("#auth-bearer-value").fill(token);
  await dialog.locator("button.modal-btn.authorize").click();
  await dialog.locator("button.modal-btn.btn-done").click();
  const listed = await tryIt(op("get", "/v1/workspaces"));
  if (!listed.startsWith("200")) throw new Error(`GET /v1/workspaces in Swagger UI answered ${listed}`);
  report({ stage: "swagger-authorized", status: Number.parseInt(listed, 10) });

  // 2. The live page.
  await page.goto(`${base}/`);
  await page.fill("#email", email);
  await page.fill("#password", password);
  await page.click("#log-in");
  await page.locator("#status.live").waitFor();
  await page.fill("#title", "written in the page");
  await page.click("#new-todo button");
  await page.locator("#todos li", { hasText: "written in the page" }).waitFor();
  const session = await page.evaluate(() => window.todoSession);
  report({ stage: "live", token: session.token, workspace: session.workspace });

  await page.locator("#todos li", { hasText: "made elsewhere" }).waitFor();
  await page.locator("#todos li.done", { hasText: "written in the page" }).waitFor();
  await page.locator("#events li", { hasText: "todo.completed" }).waitFor();
  const events = await page.locator("#events li").allInnerTexts();
  await page.screenshot({ path: `${artifacts}/todo-live-page.png` });
  if (problems.length) throw new Error(`the page had errors: ${problems.join("; ")}`);
  report({ stage: "done", events });
} finally {
  await browser.close();
}
