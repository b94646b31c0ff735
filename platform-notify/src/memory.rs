//! The in-process notifier (`memory://`): records every notification it is given, for
//! development without vendors and for tests of code that notifies.

use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

use crate::{Address, Capabilities, Notification, Notifier, NotifyError, Receipt};

/// Records notifications in order.
#[derive(Debug, Default)]
pub struct MemoryNotifier {
    sent: Mutex<Vec<(Notification, Address)>>,
}

impl MemoryNotifier {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// What was sent so far, oldest first.
    pub fn sent(&self) -> Vec<(Notification, Address)> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl Notifier for MemoryNotifier {
    fn driver(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { max_text: usize::MAX, title: true, addresses: true }
    }

    async fn send(&self, notification: &Notification, to: &Address) -> Result<Receipt, NotifyError> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).push((notification.clone(), to.clone()));
        Ok(Receipt { vendor_id: Some(notification.id.clone()), pause: None })
    }
}
