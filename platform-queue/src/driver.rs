//! What only a backend author needs: the building blocks the backends of this crate
//! are made of, public so a backend outside it is built the same way.
//!
//! Users never need this module: they hold a [`Queue`](crate::Queue) from
//! [`open`](crate::open) or a backend's `from_url`, both a
//! [`QueueHandle`](crate::QueueHandle), which validates input, keeps the closed state,
//! stamps errors and opens spans for every backend alike.
//!
//! A backend implements [`Queue`](crate::Queue) for the part that is its own and
//! returns it wrapped in [`QueueHandle::new`](crate::QueueHandle::new). It reads its
//! URL with [`QueueUrl`] and hands out [`Delivery`](crate::Delivery) values that settle
//! through its [`Acker`]. A backend without leases of its own implements [`LeaseStore`]
//! (a few atomic steps on stored rows) and gets the whole contract from
//! [`LeasedQueue`].

pub use crate::lease::{Claimed, Lease, LeaseStore, LeasedQueue, NewMessage, Release, StoredMessage, now_ms};
pub use crate::message::{Acker, dead_letter_headers, validate_header};
pub use crate::options::{QueueUrl, validate_name};
