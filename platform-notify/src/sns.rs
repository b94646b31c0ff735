//! Amazon SNS `Publish` (through `aws-sdk-sns`):
//! `sns://?topic_arn=arn:aws:sns:…&region=…` sends [`Address::Configured`] to the topic,
//! [`Address::Device`] to a mobile platform endpoint ARN, and [`Address::Phone`] as an
//! SMS. `endpoint=` sends to another server (moto, LocalStack); credentials come from
//! `access_key_id`, `secret_access_key`, `session_token` or the `AWS_*` variables.
//!
//! The message is the text (title line first); the title is also the `Subject` (what
//! email subscribers see; SNS takes 100 ASCII characters, longer or other titles are
//! left out of it); the data and the severity go as message attributes. A FIFO topic
//! (`….fifo`) gets the notification's id as its deduplication id, so a retry is not a
//! second message, and `group=` (`notify` by default) as the group.
//!
//! The SDK's own retries are off: the dispatcher decides. Errors are read from the
//! error code: `EndpointDisabled` and (for an endpoint) `NotFound` are the recipient
//! gone; `InvalidParameter`, `InvalidParameterValue` and `ValidationError` the
//! payload; `AuthorizationError`, `InvalidSecurity`, `InvalidClientTokenId`,
//! `PlatformApplicationDisabled`, KMS errors and a missing topic the configuration;
//! the throttling codes, 5xx and unreachable servers retry.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sns::config::retry::RetryConfig;
use aws_sdk_sns::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::MessageAttributeValue;
use platform_core::config::UrlParams;
use platform_core::{Error, ErrorKind, Result};

use crate::driver::text_of;
use crate::{Address, Capabilities, Disposition, Notification, Notifier, NotifyError, Receipt};

const DRIVER: &str = "sns";
/// The longest SMS text SNS sends, in characters.
pub const MAX_SMS: usize = 1600;

/// The SNS driver.
#[derive(Debug)]
pub struct Sns {
    client: aws_sdk_sns::Client,
    topic_arn: Option<String>,
    group: String,
}

impl Sns {
    /// From `sns://?topic_arn=…`.
    pub fn from_url(params: &mut UrlParams) -> Result<Self> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let topic_arn = params.take("topic_arn");
        let endpoint = params.take("endpoint");
        let region = params.take("region").or_else(|| env("AWS_REGION")).unwrap_or_else(|| "us-east-1".into());
        let key = params.take("access_key_id").or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret = params.take("secret_access_key").or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        let token = params.take("session_token").or_else(|| env("AWS_SESSION_TOKEN"));
        let group = params.take("group").unwrap_or_else(|| "notify".to_owned());
        let timeout = params.take_duration("timeout")?.unwrap_or(Duration::from_secs(10));
        params.finish(DRIVER)?;
        if let Some(arn) = &topic_arn
            && !arn.starts_with("arn:")
        {
            return Err(params.error("topic_arn", "is not an ARN (arn:aws:sns:{region}:{account}:{topic})"));
        }
        let (Some(key), Some(secret)) = (key, secret) else {
            return Err(Error::new(
                ErrorKind::Unauthenticated,
                "sns needs credentials: access_key_id and secret_access_key in the URL or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
            )
            .with_backend(DRIVER)
            .with_op("open"));
        };
        let timeouts = aws_sdk_sns::config::timeout::TimeoutConfig::builder().operation_timeout(timeout).build();
        let mut config = aws_sdk_sns::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            .credentials_provider(Credentials::new(key, secret, token, None, "platform-notify"));
        if let Some(e) = endpoint {
            config = config.endpoint_url(e);
        }
        Ok(Self { client: aws_sdk_sns::Client::from_conf(config.build()), topic_arn, group })
    }
}

/// What an SNS error code means; `to_endpoint`: the message went to a device endpoint
/// (whose `NotFound` is the recipient gone, where a topic's is the configuration).
pub fn disposition(code: Option<&str>, status: Option<u16>, to_endpoint: bool) -> Disposition {
    match code.unwrap_or_default() {
        "EndpointDisabled" => Disposition::RecipientGone,
        "NotFound" if to_endpoint => Disposition::RecipientGone,
        "NotFound"
        | "AuthorizationError"
        | "InvalidSecurity"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "AccessDenied"
        | "AccessDeniedException"
        | "PlatformApplicationDisabled"
        | "KMSAccessDenied"
        | "KMSDisabled"
        | "KMSInvalidState"
        | "KMSNotFound"
        | "KMSOptInRequired" => Disposition::FixConfig,
        "InvalidParameter" | "InvalidParameterValue" | "MissingParameter" | "ValidationError" => {
            Disposition::FixPayload
        }
        "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "ProvisionedThroughputExceededException"
        | "SlowDown"
        | "RequestLimitExceeded"
        | "BandwidthLimitExceeded"
        | "KMSThrottling"
        | "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable" => Disposition::Retry { after: None },
        _ => match status {
            Some(429 | 500..=599) | None => Disposition::Retry { after: None },
            Some(401 | 403) => Disposition::FixConfig,
            Some(404) if to_endpoint => Disposition::RecipientGone,
            Some(_) => Disposition::FixPayload,
        },
    }
}

fn string_attribute(value: &str) -> Option<MessageAttributeValue> {
    MessageAttributeValue::builder().data_type("String").string_value(value).build().ok()
}

#[async_trait]
impl Notifier for Sns {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> Capabilities {
        // 256 KiB a message; 60 000 characters fit in UTF-8 at four bytes each.
        Capabilities { max_text: 60_000, title: true, addresses: true }
    }

    async fn send(&self, n: &Notification, to: &Address) -> std::result::Result<Receipt, NotifyError> {
        let text = text_of(n);
        let mut request = self.client.publish().message(&text);
        let to_endpoint = matches!(to, Address::Device(_));
        match to {
            Address::Configured => {
                let Some(arn) = &self.topic_arn else {
                    let why = "no topic_arn configured: send to a device endpoint or a phone";
                    return Err(NotifyError::new(DRIVER, Disposition::FixConfig, why));
                };
                request = request.topic_arn(arn);
                if arn.ends_with(".fifo") {
                    request = request.message_group_id(&self.group).message_deduplication_id(&n.id);
                }
            }
            Address::Device(arn) => request = request.target_arn(arn),
            Address::Phone(number) => {
                let len = text.chars().count();
                if len > MAX_SMS {
                    let why = format!("an SMS of {len} characters, over the {MAX_SMS} SNS sends");
                    return Err(NotifyError::new(DRIVER, Disposition::FixPayload, why));
                }
                request = request.phone_number(number);
            }
            other => return Err(NotifyError::new(DRIVER, Disposition::FixConfig, format!("cannot send to {other}"))),
        }
        if let Some(subject) = n.title.as_ref().filter(|t| t.len() <= 100 && t.is_ascii() && !t.is_empty()) {
            request = request.subject(subject);
        }
        let severity = serde_json::to_value(n.severity).ok();
        let severity = severity.as_ref().and_then(|v| v.as_str()).unwrap_or("notice");
        if let Some(v) = string_attribute(severity) {
            request = request.message_attributes("severity", v);
        }
        for (k, v) in &n.data {
            if let Some(v) = string_attribute(v) {
                request = request.message_attributes(k, v);
            }
        }
        match request.send().await {
            Ok(out) => Ok(Receipt { vendor_id: out.message_id().map(str::to_owned), pause: None }),
            Err(e) => {
                let status = match &e {
                    SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
                    SdkError::ResponseError(r) => Some(r.raw().status().as_u16()),
                    _ => None,
                };
                let code = e.code().map(str::to_owned);
                let disposition = disposition(code.as_deref(), status, to_endpoint);
                let reason = code.unwrap_or_else(|| match &e {
                    SdkError::TimeoutError(_) => "timed out".to_owned(),
                    SdkError::DispatchFailure(_) => "could not reach the server".to_owned(),
                    _ => "the answer could not be read".to_owned(),
                });
                let error = NotifyError::new(DRIVER, disposition, reason);
                Err(match status {
                    Some(s) => error.with_status(s),
                    None => error,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dispositions() {
        let retry = Disposition::Retry { after: None };
        assert_eq!(disposition(Some("EndpointDisabled"), Some(400), true), Disposition::RecipientGone);
        assert_eq!(disposition(Some("NotFound"), Some(404), true), Disposition::RecipientGone);
        assert_eq!(disposition(Some("NotFound"), Some(404), false), Disposition::FixConfig);
        assert_eq!(disposition(Some("AuthorizationError"), Some(403), false), Disposition::FixConfig);
        assert_eq!(disposition(Some("InvalidParameter"), Some(400), false), Disposition::FixPayload);
        assert_eq!(disposition(Some("Throttling"), Some(400), false), retry);
        assert_eq!(disposition(Some("ThrottledException"), Some(429), false), retry);
        assert_eq!(disposition(None, Some(503), false), retry);
        assert_eq!(disposition(None, None, false), retry, "unreachable");
    }
}
