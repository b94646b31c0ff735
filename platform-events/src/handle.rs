//! What the portable handles ([`BroadcastHandle`](crate::BroadcastHandle),
//! [`BusHandle`](crate::BusHandle)) share: the driver accessor, spans, error stamping,
//! the closed check, `Debug`, `Display` and the health check.

/// Writes the shared part of handle `$handle` over trait `$trait`: its spans are named
/// `$span`, and a call after `close` is `Cancelled` with `$closed`.
macro_rules! portable_handle {
    ($handle:ident, $trait:ident, $span:literal, $closed:literal) => {
        impl<B: $trait + ?Sized> $handle<B> {
            /// The backend under the portable layer. Calls through it skip the checks.
            pub fn driver(&self) -> &B {
                &self.inner
            }

            fn span(&self, op: &'static str, name: &str) -> tracing::Span {
                tracing::debug_span!($span, backend = self.inner.backend(), op, name)
            }

            fn stamp(&self, op: &'static str) -> impl Fn(Error) -> Error + '_ {
                move |e| e.in_context(self.inner.backend(), op)
            }

            fn check_open(&self, op: &'static str) -> Result<()> {
                if self.closed.load(Ordering::Acquire) {
                    return Err(Error::new(ErrorKind::Cancelled, $closed)
                        .with_backend(self.inner.backend())
                        .with_op(op));
                }
                Ok(())
            }
        }

        impl<B: $trait + ?Sized> Debug for $handle<B> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                Debug::fmt(&self.inner, f)
            }
        }

        impl<B: $trait + ?Sized> Display for $handle<B> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                Display::fmt(&self.inner, f)
            }
        }

        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<B: $trait + ?Sized> HealthCheck for $handle<B> {
            fn name(&self) -> String {
                self.inner.name()
            }
            fn critical(&self) -> bool {
                self.inner.critical()
            }
            async fn check(&self) -> Result<CheckOutcome> {
                self.inner.check().instrument(self.span("health", "")).await.map_err(self.stamp("health"))
            }
        }
    };
}

pub(crate) use portable_handle;
