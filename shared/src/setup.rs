//! What a service does once before it consumes: declare the topology as soon as the broker is
//! reachable, so messages published meanwhile wait in their queues, with the same back-off and
//! shutdown handling as every other wait on the broker ([`crate::amqp::connect_with_retry`],
//! [`Backoff`]).

use std::future::Future;

use lapin::Channel;

use crate::amqp::{self, Backoff};
use crate::config::AmqpConfig;
use crate::shutdown::Shutdown;
use crate::topology::Topology;

/// Declare what this login declares of `topology` ([`Topology::declare_for`]: a service's own
/// queues with its own user, everything as an administrator) on a connection named `name`, waiting for the broker (with back-off) until
/// it takes the declarations, then run `check` on a channel of its own: a check of what the
/// service needs beyond the topology, such as a passive declare of an exchange it publishes to
/// (which closes its channel when the exchange is missing, hence a channel of its own).
///
/// Returns `Ok(false)` if shutdown came first. A declaration that fails is retried; a `check` that
/// fails is not (waiting does not fix a configuration) and is the error returned.
pub async fn declare_with_retry<F, Fut>(
    config: &AmqpConfig,
    topology: &Topology,
    name: &str,
    shutdown: &mut Shutdown,
    check: F,
) -> anyhow::Result<bool>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Backoff::new(config.reconnect_max_secs);
    loop {
        let Some(conn) = amqp::connect_with_retry(config, name, shutdown).await else {
            return Ok(false);
        };
        let declared = async {
            let channel = conn.create_channel().await?;
            topology.declare_for(config.login_role(), &channel).await?;
            let _ = channel.close(200, "declared").await;
            conn.create_channel().await
        }
        .await;
        let checked = match declared {
            Ok(channel) => {
                let result = check(channel.clone()).await;
                // Closed before the connection: closing a connection with channels still open
                // makes the client log a spurious connection error.
                let _ = channel.close(200, "checked").await;
                Ok(result)
            }
            Err(err) => Err(err),
        };
        let _ = conn.close(200, "declared").await;
        match checked {
            Ok(result) => return result.map(|()| true),
            Err(err) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64,
                    "cannot declare the topology");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => return Ok(false),
                }
            }
        }
    }
}
