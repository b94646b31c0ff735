//! SNS against moto (`PLATFORM_TEST_SNS_URL`, e.g.
//! `sns://?endpoint=http://127.0.0.1:5005&region=us-east-1&access_key_id=test&secret_access_key=test`):
//! a topic delivering to an SQS queue the test reads, a mobile endpoint that is disabled
//! midway, SMS, a FIFO topic, and the failures moto can cause.

use std::time::Duration;

use aws_sdk_sns::config::{BehaviorVersion, Credentials, Region};
use platform_notify::{Address, Disposition, Notification, open};

struct Aws {
    sns: aws_sdk_sns::Client,
    sqs: aws_sdk_sqs::Client,
    base: String,
}

fn aws(url: &str) -> Aws {
    let parsed = url::Url::parse(url).unwrap();
    let get = |k: &str| parsed.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
    let endpoint = get("endpoint").expect("the SNS test URL names its endpoint");
    let region = Region::new(get("region").unwrap_or_else(|| "us-east-1".into()));
    let creds = Credentials::new(
        get("access_key_id").unwrap_or_else(|| "test".into()),
        get("secret_access_key").unwrap_or_else(|| "test".into()),
        None,
        None,
        "test",
    );
    let sns = aws_sdk_sns::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(region.clone())
        .credentials_provider(creds.clone())
        .endpoint_url(&endpoint)
        .build();
    let sqs = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(creds)
        .endpoint_url(&endpoint)
        .build();
    Aws { sns: aws_sdk_sns::Client::from_conf(sns), sqs: aws_sdk_sqs::Client::from_conf(sqs), base: url.to_owned() }
}

fn unique(what: &str) -> String {
    format!("notify-{what}-{}", uuid::Uuid::now_v7().simple())
}

impl Aws {
    fn with(&self, extra: &str) -> String {
        let sep = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{sep}{extra}", self.base)
    }

    /// One message from `queue`, waiting up to 10 s.
    async fn receive(&self, queue: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.sqs.receive_message().queue_url(queue).wait_time_seconds(1).send().await.unwrap();
            if let Some(m) = got.messages().first() {
                return serde_json::from_str(m.body().unwrap()).unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "nothing arrived in the subscribed queue");
        }
    }
}

#[tokio::test]
async fn sns_publishes_to_topics_endpoints_and_phones() {
    let Some(url) = platform_core::testkit::server_url("SNS") else { return };
    let aws = aws(&url);
    // A topic delivering to a queue.
    let topic = aws.sns.create_topic().name(unique("topic")).send().await.unwrap().topic_arn.unwrap();
    let queue = aws.sqs.create_queue().queue_name(unique("inbox")).send().await.unwrap().queue_url.unwrap();
    let queue_arn = aws
        .sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    aws.sns.subscribe().topic_arn(&topic).protocol("sqs").endpoint(queue_arn).send().await.unwrap();

    let sns = open(&aws.with(&format!("topic_arn={topic}"))).unwrap();
    let n = Notification::new("disk at 91%").title("db-1").data("host", "db-1");
    let r = sns.send(&n, &Address::Configured).await.unwrap();
    assert!(r.vendor_id.is_some());
    let got = aws.receive(&queue).await;
    assert_eq!(got["Message"], "db-1\ndisk at 91%");
    assert_eq!(got["Subject"], "db-1");
    assert_eq!(got["MessageAttributes"]["host"]["Value"], "db-1");
    assert_eq!(got["MessageAttributes"]["severity"]["Value"], "notice");

    // A mobile endpoint: delivered, then disabled (APNs or FCM refused its token): gone.
    let app = aws
        .sns
        .create_platform_application()
        .name(unique("app"))
        .platform("GCM")
        .attributes("PlatformCredential", "server-key")
        .send()
        .await
        .unwrap()
        .platform_application_arn
        .unwrap();
    let endpoint = aws
        .sns
        .create_platform_endpoint()
        .platform_application_arn(app)
        .token(unique("device"))
        .send()
        .await
        .unwrap()
        .endpoint_arn
        .unwrap();
    let device = Address::Device(endpoint.clone());
    sns.send(&n, &device).await.unwrap();
    aws.sns.set_endpoint_attributes().endpoint_arn(&endpoint).attributes("Enabled", "false").send().await.unwrap();
    let e = sns.send(&n, &device).await.unwrap_err();
    assert_eq!(e.disposition, Disposition::RecipientGone, "{e}");
    assert_eq!(e.reason, "EndpointDisabled");

    // SMS: an E.164 number goes; anything else is the payload's fault; too long is refused.
    sns.send(&Notification::new("your code is 123456"), &Address::Phone("+15555550100".into())).await.unwrap();
    let e = sns.send(&n, &Address::Phone("not-a-number".into())).await.unwrap_err();
    assert_eq!(e.disposition, Disposition::FixPayload, "{e}");
    let long = Notification::new("x".repeat(1601));
    let e = sns.send(&long, &Address::Phone("+15555550100".into())).await.unwrap_err();
    assert_eq!(e.disposition, Disposition::FixPayload, "{e}");
    let huge = Notification::new("x".repeat(60_001));
    assert_eq!(sns.send(&huge, &Address::Configured).await.unwrap_err().disposition, Disposition::FixPayload);
    assert_eq!(sns.send(&n, &Address::Chat("1".into())).await.unwrap_err().disposition, Disposition::FixConfig);
}

#[tokio::test]
async fn sns_fifo_topics_deduplicate_by_notification_id() {
    let Some(url) = platform_core::testkit::server_url("SNS") else { return };
    let aws = aws(&url);
    let topic = aws
        .sns
        .create_topic()
        .name(format!("{}.fifo", unique("fifo")))
        .attributes("FifoTopic", "true")
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let sns = open(&aws.with(&format!("topic_arn={topic}&group=alerts"))).unwrap();
    // Without a deduplication id (content-based deduplication is off) SNS refuses.
    let n = Notification::new("failover started");
    sns.send(&n, &Address::Configured).await.unwrap();
    sns.send(&n, &Address::Configured).await.unwrap();
}

#[tokio::test]
async fn sns_failures_are_dispositions() {
    let Some(url) = platform_core::testkit::server_url("SNS") else { return };
    let aws = aws(&url);
    let n = Notification::new("hello");
    // A topic that does not exist: the configuration.
    let missing = aws.with("topic_arn=arn:aws:sns:us-east-1:123456789012:no-such-topic");
    let e = open(&missing).unwrap().send(&n, &Address::Configured).await.unwrap_err();
    assert_eq!(e.disposition, Disposition::FixConfig, "{e}");
    // No topic configured.
    let e = open(&aws.base).unwrap().send(&n, &Address::Configured).await.unwrap_err();
    assert_eq!(e.disposition, Disposition::FixConfig, "{e}");
    // A server that is not there: retry.
    let gone =
        "sns://?topic_arn=arn:aws:sns:us-east-1:1:t&endpoint=http://127.0.0.1:1&access_key_id=a&secret_access_key=b";
    let e = open(gone).unwrap().send(&n, &Address::Configured).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    // Bad URLs name their part, the secret masked.
    let e = open("sns://?topic_arn=alerts&access_key_id=a&secret_access_key=b").unwrap_err().to_string();
    assert!(e.contains("topic_arn"), "{e}");
    let e =
        open("sns://?topic_arn=arn:x&access_key_id=a&secret_access_key=hunter2&colour=red").unwrap_err().to_string();
    assert!(e.contains("colour") && !e.contains("hunter2"), "{e}");
}
