//! One MQTT 5 connection: its event loop on a task, publishes and subscribes that
//! wait for the broker's acknowledgement.
//!
//! rumqttc numbers packets itself and reports the number it chose in an `Outgoing`
//! event, in the order the requests were made. Requests are made under one lock, in
//! the order their waiters are queued, so each event names the oldest waiter; the
//! broker's `PUBACK`/`SUBACK` for that number resolves it. A connection is never
//! resumed by rumqttc: when it drops, every waiter fails and the session opens a new
//! one, so the numbering starts afresh.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use platform_core::{Error, ErrorKind, Result};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, Packet, PubAckReason, Publish, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long a publish or subscribe waits for the broker.
pub(super) const TIMEOUT: Duration = Duration::from_secs(15);

/// What went wrong, as the socket or the broker said it.
#[derive(Debug)]
pub(super) enum Failure<'a> {
    Connection(&'a ConnectionError),
    PubAck(&'a PubAckReason),
    SubAck(&'a SubscribeReasonCode),
}

/// Maps an MQTT failure onto the portable kinds.
pub(super) fn kind_of(failure: &Failure<'_>) -> ErrorKind {
    match failure {
        Failure::Connection(ConnectionError::ConnectionRefused(code)) => match code {
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::BadAuthenticationMethod => {
                ErrorKind::Unauthenticated
            }
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::Banned => ErrorKind::PermissionDenied,
            ConnectReturnCode::ClientIdentifierNotValid
            | ConnectReturnCode::MalformedPacket
            | ConnectReturnCode::ProtocolError
            | ConnectReturnCode::UnsupportedProtocolVersion
            | ConnectReturnCode::PacketTooLarge
            | ConnectReturnCode::TopicNameInvalid
            | ConnectReturnCode::PayloadFormatInvalid
            | ConnectReturnCode::QoSNotSupported => ErrorKind::InvalidInput,
            ConnectReturnCode::QuotaExceeded | ConnectReturnCode::ConnectionRateExceeded => ErrorKind::RateLimited,
            _ => ErrorKind::Unavailable,
        },
        Failure::Connection(ConnectionError::Timeout(_)) => ErrorKind::Timeout,
        Failure::Connection(ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::SessionTakenOver,
            ..
        })) => ErrorKind::Conflict,
        Failure::Connection(_) => ErrorKind::Unavailable,
        Failure::PubAck(reason) => match reason {
            PubAckReason::Success => ErrorKind::Internal,
            PubAckReason::NotAuthorized => ErrorKind::PermissionDenied,
            PubAckReason::TopicNameInvalid | PubAckReason::PayloadFormatInvalid => ErrorKind::InvalidInput,
            PubAckReason::QuotaExceeded => ErrorKind::RateLimited,
            PubAckReason::NoMatchingSubscribers => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        },
        Failure::SubAck(code) => match code {
            SubscribeReasonCode::NotAuthorized => ErrorKind::PermissionDenied,
            SubscribeReasonCode::TopicFilterInvalid => ErrorKind::InvalidInput,
            SubscribeReasonCode::QuotaExceeded => ErrorKind::RateLimited,
            SubscribeReasonCode::SharedSubscriptionsNotSupported
            | SubscribeReasonCode::WildcardSubscriptionsNotSupported
            | SubscribeReasonCode::SubscriptionIdNotSupported => ErrorKind::Unsupported,
            _ => ErrorKind::Internal,
        },
    }
}

pub(super) fn error(failure: &Failure<'_>, what: &str) -> Error {
    let detail = match failure {
        Failure::Connection(e) => e.to_string(),
        Failure::PubAck(r) => format!("{r:?}"),
        Failure::SubAck(c) => format!("{c:?}"),
    };
    Error::new(kind_of(failure), format!("{what}: {detail}")).with_backend("mqtt")
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn dropped(op: &'static str) -> Error {
    Error::unavailable("the connection to the broker dropped").with_backend("mqtt").with_op(op)
}

type Waiter<T> = oneshot::Sender<Result<T>>;

/// Requests sent, in order, and those the event loop has numbered.
struct Pending<T> {
    unnumbered: VecDeque<Waiter<T>>,
    numbered: HashMap<u16, Waiter<T>>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self { unnumbered: VecDeque::new(), numbered: HashMap::new() }
    }
}

impl<T> Pending<T> {
    fn numbered(&mut self, pkid: u16) {
        if !self.numbered.contains_key(&pkid)
            && let Some(w) = self.unnumbered.pop_front()
        {
            self.numbered.insert(pkid, w);
        }
    }

    fn resolve(&mut self, pkid: u16, result: Result<T>) {
        if let Some(w) = self.numbered.remove(&pkid) {
            let _ = w.send(result);
        }
    }

    fn fail_all(&mut self, op: &'static str) {
        for w in self.unnumbered.drain(..).chain(self.numbered.drain().map(|(_, w)| w)) {
            let _ = w.send(Err(dropped(op)));
        }
    }
}

#[derive(Default)]
struct Waiters {
    publishes: Pending<PubAckReason>,
    subscribes: Pending<()>,
}

/// Where a connection hands incoming publishes.
pub(super) type Sink = Arc<dyn Fn(&Arc<Link>, Publish) + Send + Sync>;

/// One live connection. Deliveries keep the connection they came on: once it is gone,
/// the broker gives their messages out again.
pub(super) struct Link {
    pub(super) id: u64,
    client: AsyncClient,
    alive: AtomicBool,
    waiters: Mutex<Waiters>,
    order: tokio::sync::Mutex<()>,
    /// Cancelled when the connection is gone.
    pub(super) gone: CancellationToken,
    stop: CancellationToken,
    failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("id", &self.id).field("alive", &self.is_alive()).finish_non_exhaustive()
    }
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

impl Link {
    /// Connects (waiting for `CONNACK`) and starts the event loop.
    pub(super) async fn connect(options: MqttOptions, sink: Sink) -> Result<Arc<Self>> {
        let (client, mut events) = AsyncClient::new(options, 256);
        let connack = match tokio::time::timeout(TIMEOUT, events.poll()).await {
            Err(_) => {
                return Err(
                    Error::new(ErrorKind::Timeout, "connecting to the MQTT broker timed out").with_backend("mqtt")
                );
            }
            Ok(Err(e @ ConnectionError::Timeout(_))) => {
                let what = "the broker did not answer an MQTT 5 CONNECT (brokers that speak only MQTT 3.1.1, \
                            such as ActiveMQ Classic, never do)";
                return Err(error(&Failure::Connection(&e), what));
            }
            Ok(Err(e)) => return Err(error(&Failure::Connection(&e), "cannot connect to the MQTT broker")),
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => ack,
            Ok(Ok(other)) => {
                return Err(Error::internal(format!("expected CONNACK, got {other:?}")).with_backend("mqtt"));
            }
        };
        tracing::debug!(session_present = connack.session_present, "mqtt connected");
        let link = Arc::new(Self {
            id: NEXT_LINK.fetch_add(1, Ordering::Relaxed),
            client,
            alive: AtomicBool::new(true),
            waiters: Mutex::default(),
            order: tokio::sync::Mutex::new(()),
            gone: CancellationToken::new(),
            stop: CancellationToken::new(),
            failure: Mutex::new(None),
        });
        let driver = Arc::clone(&link);
        tokio::spawn(async move { driver.drive(events, sink).await });
        Ok(link)
    }

    async fn drive(self: Arc<Self>, mut events: rumqttc::v5::EventLoop, sink: Sink) {
        let mut stopping = false;
        loop {
            let event = if stopping {
                match tokio::time::timeout(Duration::from_secs(2), events.poll()).await {
                    Ok(e) => e,
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    () = self.stop.cancelled() => {
                        stopping = true;
                        if self.client.try_disconnect().is_err() {
                            break;
                        }
                        continue;
                    }
                    e = events.poll() => e,
                }
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => sink(&self, p),
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    lock(&self.waiters).publishes.resolve(ack.pkid, Ok(ack.reason));
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let result = match ack.return_codes.iter().find(|c| !matches!(c, SubscribeReasonCode::Success(_))) {
                        None => Ok(()),
                        Some(code) => Err(error(&Failure::SubAck(code), "the broker refused the subscription")),
                    };
                    lock(&self.waiters).subscribes.resolve(ack.pkid, result);
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    *lock(&self.failure) = Some(format!("the broker disconnected: {:?}", d.reason_code));
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => lock(&self.waiters).publishes.numbered(pkid),
                Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => lock(&self.waiters).subscribes.numbered(pkid),
                Ok(Event::Outgoing(Outgoing::Disconnect)) if stopping => break,
                Ok(_) => {}
                Err(e) => {
                    if !stopping {
                        tracing::debug!(error = %e, "mqtt connection dropped");
                        *lock(&self.failure) = Some(e.to_string());
                    }
                    break;
                }
            }
        }
        self.alive.store(false, Ordering::Release);
        let mut waiters = lock(&self.waiters);
        waiters.publishes.fail_all("publish");
        waiters.subscribes.fail_all("subscribe");
        drop(waiters);
        self.gone.cancel();
    }

    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Why the connection went, when it did.
    pub(super) fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Sends `DISCONNECT` and ends the connection; the broker keeps a persistent session.
    pub(super) fn close(&self) {
        self.stop.cancel();
    }

    /// Publishes at QoS 1 and waits for the broker's `PUBACK`, returning its reason.
    pub(super) async fn publish(
        &self,
        topic: String,
        payload: Bytes,
        retain: bool,
        properties: PublishProperties,
    ) -> Result<PubAckReason> {
        if !self.is_alive() {
            return Err(dropped("publish"));
        }
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.order.lock().await;
            lock(&self.waiters).publishes.unnumbered.push_back(tx);
            let sent = self.client.publish_with_properties(topic, QoS::AtLeastOnce, retain, payload, properties).await;
            if let Err(e) = sent {
                lock(&self.waiters).publishes.unnumbered.pop_back();
                return Err(Error::invalid_input(format!("cannot publish: {e}"))
                    .with_backend("mqtt")
                    .with_op("publish"));
            }
        }
        wait(rx, "publish").await
    }

    /// Publishes and requires a subscriber to have taken it (`Success`).
    pub(super) async fn deliver(&self, topic: String, payload: Bytes, properties: PublishProperties) -> Result<()> {
        match self.publish(topic, payload, false, properties).await? {
            PubAckReason::Success => Ok(()),
            reason => Err(error(&Failure::PubAck(&reason), "the broker did not take the message").with_op("publish")),
        }
    }

    /// Subscribes at QoS 1 and waits for the broker's `SUBACK`.
    pub(super) async fn subscribe(&self, filter: &str) -> Result<()> {
        if !self.is_alive() {
            return Err(dropped("subscribe"));
        }
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.order.lock().await;
            lock(&self.waiters).subscribes.unnumbered.push_back(tx);
            if let Err(e) = self.client.subscribe(filter, QoS::AtLeastOnce).await {
                lock(&self.waiters).subscribes.unnumbered.pop_back();
                return Err(Error::invalid_input(format!("cannot subscribe to {filter:?}: {e}")).with_backend("mqtt"));
            }
        }
        wait(rx, "subscribe").await
    }

    /// Unsubscribes without waiting for the broker's answer.
    pub(super) async fn unsubscribe(&self, filter: &str) {
        let _order = self.order.lock().await;
        let _ = self.client.unsubscribe(filter).await;
    }

    /// Acknowledges a received message (`PUBACK`).
    pub(super) fn ack(&self, publish: &Publish) -> Result<()> {
        if !self.is_alive() {
            return Err(Error::conflict("lease was lost (the connection dropped)").with_backend("mqtt").with_op("ack"));
        }
        self.client
            .try_ack(publish)
            .map_err(|e| Error::unavailable(format!("cannot acknowledge: {e}")).with_backend("mqtt").with_op("ack"))
    }
}

async fn wait<T>(rx: oneshot::Receiver<Result<T>>, op: &'static str) -> Result<T> {
    match tokio::time::timeout(TIMEOUT, rx).await {
        Err(_) => Err(Error::new(ErrorKind::Timeout, format!("the broker did not answer a {op} in {TIMEOUT:?}"))
            .with_backend("mqtt")),
        Ok(Err(_)) => Err(dropped(op)),
        Ok(Ok(r)) => r.map_err(|e| e.with_op(op)),
    }
}
