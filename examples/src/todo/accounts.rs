//! Accounts: register, log in (password, then the TOTP code once it is on), TOTP.

use super::*;

/// Registers a user.
#[utoipa::path(post, path = "/v1/auth/register", request_body = Credentials, tag = "auth",
    responses((status = 201, description = "Registered", body = User),
        (status = 409, description = "The email is taken", body = platform_core::Problem),
        (status = 400, description = "Invalid input", body = platform_core::Problem)))]
pub(super) async fn register(
    State(st): State<AppState>,
    Json(c): Json<Credentials>,
) -> Result<(StatusCode, Json<User>)> {
    check_email(&c.email)?;
    if !(8..=256).contains(&c.password.chars().count()) {
        return Err(Error::invalid_input("password must be 8 to 256 characters").with_detail("password", "length"));
    }
    let passwords = Arc::clone(&st.passwords);
    let password = c.password.clone();
    let hash = tokio::task::spawn_blocking(move || passwords.hash(&password))
        .await
        .map_err(|e| Error::internal(format!("hashing stopped: {e}")))??;
    let id = uuid::Uuid::now_v7().to_string();
    let email = c.email.to_lowercase();
    let insert = Sql::new("INSERT INTO users (id, email, password_hash, created_at) VALUES (?, ?, ?, ?)")
        .bind(id.clone())
        .bind(email.clone())
        .bind(hash)
        .bind(now_ms());
    st.db.execute(&insert).await.map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            Error::new(ErrorKind::Conflict, "that email is registered")
        } else {
            e
        }
    })?;
    Ok((StatusCode::CREATED, Json(User { id, email })))
}

/// Logs in: an access token for the user.
#[utoipa::path(post, path = "/v1/auth/login", request_body = Credentials, tag = "auth",
    responses((status = 200, description = "Logged in", body = Token),
        (status = 401, description = "Wrong email or password", body = platform_core::Problem)))]
pub(super) async fn login(State(st): State<AppState>, Json(c): Json<Credentials>) -> Result<Json<Token>> {
    let row = st
        .db
        .fetch_optional(
            &Sql::new("SELECT id, password_hash, totp_secret, totp_on FROM users WHERE email = ?")
                .bind(c.email.to_lowercase()),
        )
        .await?;
    let passwords = Arc::clone(&st.passwords);
    let totp_secret = match &row {
        Some(r) if r.get::<bool>("totp_on")? => r.get::<Option<String>>("totp_secret")?,
        _ => None,
    };
    let found = row.map(|r| Ok::<_, Error>((r.get::<String>("id")?, r.get::<String>("password_hash")?))).transpose()?;
    let password = c.password.clone();
    let (user, check) = tokio::task::spawn_blocking(move || match found {
        Some((id, hash)) => passwords.verify(&password, &hash).map(|check| (Some(id), check)),
        // The same work for an unknown email, so timing tells nothing.
        None => Ok((None, passwords.verify_unknown(&password))),
    })
    .await
    .map_err(|e| Error::internal(format!("verifying stopped: {e}")))??;
    let user = match (user, check) {
        (Some(user), PasswordCheck::Right | PasswordCheck::RightRehash(_)) => user,
        _ => return Err(Error::new(ErrorKind::Unauthenticated, "wrong email or password")),
    };
    // The second factor, once the user turned it on: each code taken once.
    if let Some(secret) = totp_secret {
        let code = c.totp.as_deref().ok_or_else(|| {
            Error::new(ErrorKind::Unauthenticated, "this account needs the code of its authenticator app")
                .with_detail("totp", "required")
        })?;
        st.totp.check(&user, &decode_totp(&secret)?, code, unix_secs())?;
    }
    let access_token = st.minter.mint(&user, AUDIENCE, &[])?;
    Ok(Json(Token { access_token, token_type: "Bearer".into(), expires_in: TOKEN_TTL.as_secs() }))
}

pub(super) fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(super) fn decode_totp(secret: &str) -> Result<platform_core::Secret<Vec<u8>>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .map_err(|_| Error::internal("a stored TOTP secret is not base64"))?;
    Ok(platform_core::Secret::new(bytes))
}

/// Starts turning TOTP on: a new secret, kept until a code of it confirms it.
#[utoipa::path(post, path = "/v1/auth/totp", tag = "auth",
    responses((status = 200, description = "Scan this, then confirm with a code", body = TotpEnrolment)),
    security(("bearer" = [])))]
pub(super) async fn enrol_totp(State(st): State<AppState>, who: Principal) -> Result<Json<TotpEnrolment>> {
    use base64::Engine as _;
    let row =
        st.db.fetch_one(&Sql::new("SELECT email, totp_on FROM users WHERE id = ?").bind(who.subject.clone())).await?;
    if row.get::<bool>("totp_on")? {
        return Err(Error::new(ErrorKind::Conflict, "TOTP is on already"));
    }
    let enrolment = st.totp.enrol(&row.get::<String>("email")?)?;
    let secret = base64::engine::general_purpose::STANDARD.encode(enrolment.secret.expose());
    st.db.execute(&Sql::new("UPDATE users SET totp_secret = ? WHERE id = ?").bind(secret).bind(who.subject)).await?;
    Ok(Json(TotpEnrolment { otpauth_uri: enrolment.uri.expose().clone() }))
}

/// Turns TOTP on with a code of the new secret: from then on, logins need a code.
#[utoipa::path(post, path = "/v1/auth/totp/confirm", request_body = TotpCode, tag = "auth",
    responses((status = 204, description = "On"),
        (status = 401, description = "Wrong code", body = platform_core::Problem)),
    security(("bearer" = [])))]
pub(super) async fn confirm_totp(
    State(st): State<AppState>,
    who: Principal,
    Json(code): Json<TotpCode>,
) -> Result<StatusCode> {
    let row =
        st.db.fetch_one(&Sql::new("SELECT totp_secret FROM users WHERE id = ?").bind(who.subject.clone())).await?;
    let secret = row
        .get::<Option<String>>("totp_secret")?
        .ok_or_else(|| Error::new(ErrorKind::Conflict, "start with POST /v1/auth/totp"))?;
    st.totp.check(&who.subject, &decode_totp(&secret)?, &code.code, unix_secs())?;
    st.db.execute(&Sql::new("UPDATE users SET totp_on = ? WHERE id = ?").bind(true).bind(who.subject)).await?;
    Ok(StatusCode::NO_CONTENT)
}
