//! The event bus on the SQL queues of platform-queue: groups in a table beside the
//! queue's, every group's queue a sibling of one opened queue (one pool for all).

/// The statements a dialect writes for the group registry.
pub(crate) struct GroupSql {
    pub(crate) schema: &'static str,
    pub(crate) register: &'static str,
    pub(crate) pattern: &'static str,
    pub(crate) list: &'static str,
}

/// The error mapping of `backend`, whose database errors `kind` maps by code.
pub(crate) fn mapper(
    backend: &'static str,
    kind: fn(&dyn sqlx::error::DatabaseError) -> Option<platform_core::sql::Mapped>,
) -> impl Fn(sqlx::Error) -> platform_core::Error {
    move |e| platform_core::sql::map_sqlx(backend, e, kind)
}

/// A group store over one of platform-queue's SQL queues: `$store` the group store's
/// name, `$queue` the queue type (`LeasedQueue<…Store>`), `$backend` its name.
macro_rules! sql_groups {
    ($store:ident, $bus:ident, $queue:ty, $backend:literal, $sql:expr, $kind:path) => {
        /// Where the event bus keeps its groups on this database, and the queue every
        /// group's queue is a sibling of.
        pub struct $store {
            namespace: String,
            base: platform_queue::QueueHandle<$queue>,
        }

        impl std::fmt::Debug for $store {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($store)).field("namespace", &self.namespace).finish_non_exhaustive()
            }
        }

        /// The event bus on this database.
        pub type $bus = crate::queued::QueuedBus<$store>;

        impl $bus {
            /// Opens the bus: the URL is the queue's (its parameters apply to every
            /// group's queue) plus `namespace`.
            pub async fn from_url(url: &str) -> platform_core::Result<crate::BusHandle<Self>> {
                let bus = crate::queued::BusUrl::parse(url)?;
                let base = <$queue>::from_url(&bus.queue_url(&bus.queue_name("_"))).await?;
                let sql: &crate::sql::GroupSql = &$sql;
                let map = crate::sql::mapper($backend, $kind);
                sqlx::query(sql.schema).execute(base.driver().store().pool()).await.map_err(&map)?;
                let (options, caps) = (base.driver().options().clone(), platform_queue::Queue::capabilities(&base));
                let groups = $store { namespace: bus.namespace.clone(), base };
                Ok(crate::BusHandle::new(Self::new(groups, bus, options, &caps)))
            }
        }

        #[async_trait::async_trait]
        impl crate::queued::GroupStore for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            fn location(&self) -> String {
                platform_queue::Queue::queue_name(&self.base).to_owned()
            }

            async fn register(&self, group: &str, pattern: &str) -> platform_core::Result<(String, bool)> {
                let (sql, pool): (&crate::sql::GroupSql, _) = (&$sql, self.base.driver().store().pool());
                let map = crate::sql::mapper($backend, $kind);
                let now = platform_core::clock::now_ms();
                let inserted = sqlx::query(sql.register)
                    .bind(&self.namespace)
                    .bind(group)
                    .bind(pattern)
                    .bind(now)
                    .execute(pool)
                    .await
                    .map_err(&map)?
                    .rows_affected();
                let held: String = sqlx::query_scalar(sql.pattern)
                    .bind(&self.namespace)
                    .bind(group)
                    .fetch_one(pool)
                    .await
                    .map_err(&map)?;
                Ok((held, inserted > 0))
            }

            fn registry_ttl(&self) -> std::time::Duration {
                crate::queued::SHARED_REGISTRY_TTL
            }

            async fn groups(&self) -> platform_core::Result<Vec<(String, String)>> {
                let (sql, pool): (&crate::sql::GroupSql, _) = (&$sql, self.base.driver().store().pool());
                let map = crate::sql::mapper($backend, $kind);
                sqlx::query_as(sql.list).bind(&self.namespace).fetch_all(pool).await.map_err(&map)
            }

            async fn open_queue(
                &self,
                options: platform_queue::QueueOptions,
            ) -> platform_core::Result<std::sync::Arc<dyn platform_queue::Queue>> {
                let sibling = self.base.driver().sibling(options)?;
                Ok(std::sync::Arc::new(platform_queue::QueueHandle::new(sibling)))
            }

            async fn ping(&self) -> platform_core::Result<Option<String>> {
                platform_core::HealthCheck::check(&self.base).await.map(|o| o.version)
            }

            async fn close(&self) -> platform_core::Result<()> {
                platform_queue::Queue::close(&self.base).await
            }
        }
    };
}

pub(crate) use sql_groups;
