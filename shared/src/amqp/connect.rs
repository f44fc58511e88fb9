//! Reaching the broker: one connection attempt, retries with back-off, and the [`Backoff`] every
//! reconnecting loop of the AMQP layer uses.

use std::time::Duration;

use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};

use crate::config::AmqpConfig;
use crate::shutdown::Shutdown;

/// Connect once.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let mut props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    props
        .client_properties
        .insert("product".into(), AMQPValue::LongString("taskbot".into()));
    Connection::connect(url, props).await
}

/// The user an AMQP URL logs in as (`guest` when it names none, as the client defaults), the
/// `user_id` its publishers stamp on their messages. An unparsable URL yields `guest` too: the
/// connection itself then fails with the parse error.
pub fn url_user(url: &str) -> String {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_else(|_| "guest".to_string())
}

/// Connect, retrying with exponential back-off until it works or shutdown is requested.
pub async fn connect_with_retry(
    config: &AmqpConfig,
    name: &str,
    shutdown: &mut Shutdown,
) -> Option<Connection> {
    let mut backoff = Backoff::new(config.reconnect_max_secs);
    loop {
        if shutdown.is_triggered() {
            return None;
        }
        match connect(&config.url, name).await {
            Ok(conn) => return Some(conn),
            Err(err) if login_refused(&err) => {
                let wait = backoff.next_delay();
                let user = url_user(&config.url);
                let password_file = config
                    .users
                    .values()
                    .find(|account| account.name == user)
                    .and_then(|account| account.password_file.as_ref())
                    .or(config.password_file.as_ref())
                    .map(|file| file.display().to_string())
                    .unwrap_or_else(|| "(the URL's password)".into());
                tracing::error!(user, password_file, error = %err, retry_in_ms = wait.as_millis() as u64,
                    "the broker refused the login: a wrong password in the password file, or a user \
                     taskbot setup-users has not made");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => return None,
                }
            }
            Err(err) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "cannot reach the broker");
                match wait_or_broker_back(&config.url, wait, shutdown).await {
                    Waited::Shutdown => return None,
                    Waited::BrokerBack => {
                        tracing::info!("the broker's port accepts connections again; connecting");
                        backoff.reset();
                    }
                    Waited::Elapsed => {}
                }
            }
        }
    }
}

/// How often a service that cannot reach the broker checks whether the broker's port accepts TCP
/// connections again. A TCP probe is cheap for both sides (no handshake, nothing in the broker's
/// log worth reading), unlike an AMQP connection attempt, so it can run far more often than the
/// back-off lets attempts run: reconnection follows the broker's return within about this long,
/// however long the outage was.
pub const BROKER_PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How a wait between connection attempts ended.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    /// The whole back-off delay passed.
    Elapsed,
    /// The broker's port was closed when the wait began and accepts connections now.
    BrokerBack,
    Shutdown,
}

/// Wait out `delay`, but end it early when the broker's port, closed when the wait begins,
/// accepts connections again. When the port is open from the start (the broker answers TCP but
/// the attempt failed further on: still booting, TLS, a vhost missing) only the back-off applies,
/// so a broker that refuses us is not hammered.
async fn wait_or_broker_back(url: &str, delay: Duration, shutdown: &mut Shutdown) -> Waited {
    let deadline = tokio::time::Instant::now() + delay;
    let address = broker_address(url);
    let probing = match &address {
        Some((host, port)) => !port_accepts(host, *port).await,
        None => false,
    };
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Waited::Elapsed;
        }
        let step = if probing {
            BROKER_PROBE_INTERVAL.min(deadline - now)
        } else {
            deadline - now
        };
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = shutdown.wait() => return Waited::Shutdown,
        }
        if let (true, Some((host, port))) = (probing, &address) {
            if port_accepts(host, *port).await {
                return Waited::BrokerBack;
            }
        }
    }
}

/// The host and port an AMQP URL connects to (the scheme's default port when it names none).
fn broker_address(url: &str) -> Option<(String, u16)> {
    let uri = url.parse::<lapin::uri::AMQPUri>().ok()?;
    Some((uri.authority.host, uri.authority.port))
}

/// Whether `host:port` accepts a TCP connection within one probe interval (closed at once).
async fn port_accepts(host: &str, port: u16) -> bool {
    let attempt = tokio::net::TcpStream::connect((host, port));
    matches!(
        tokio::time::timeout(BROKER_PROBE_INTERVAL, attempt).await,
        Ok(Ok(_))
    )
}

/// Whether the broker turned the login down (a wrong user or password), as opposed to being out
/// of reach: worth an error of its own, since waiting does not fix it until someone does. Still
/// retried, so a service outlives its user being re-made.
pub fn login_refused(err: &lapin::Error) -> bool {
    let text = err.to_string().to_ascii_uppercase();
    text.contains("ACCESS_REFUSED")
        || text.contains("ACCESS-REFUSED")
        || text.contains("ACCESSREFUSED")
}

/// Exponential back-off from 0.5 s up to a maximum, with jitter so a fleet of services that lost
/// the broker together does not reconnect in lock-step.
#[derive(Debug, Clone)]
pub struct Backoff {
    next_ms: u64,
    max_ms: u64,
}

impl Backoff {
    pub fn new(max_secs: u64) -> Self {
        Backoff {
            next_ms: 500,
            max_ms: max_secs.max(1) * 1000,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        // Up to 25 % jitter, from the clock's nanoseconds (good enough, no RNG crate needed).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        Duration::from_millis(base + nanos % (base / 4 + 1))
    }

    pub fn reset(&mut self) {
        self.next_ms = 500;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_of_a_url_is_its_userinfo_or_guest() {
        assert_eq!(
            url_user("amqp://taskbot-runner:s3cret@broker:5672/%2f"),
            "taskbot-runner"
        );
        assert_eq!(url_user("amqp://127.0.0.1:5672/%2f"), "guest");
        assert_eq!(url_user("amqps://a%40b:x@broker/vh"), "a@b");
    }

    #[test]
    fn the_address_of_a_url_defaults_the_port_by_scheme() {
        let at = |url| broker_address(url).unwrap();
        assert_eq!(at("amqp://u:p@broker:5700/%2f"), ("broker".into(), 5700));
        assert_eq!(at("amqp://127.0.0.1/%2f"), ("127.0.0.1".into(), 5672));
        assert_eq!(at("amqps://broker/vh"), ("broker".into(), 5671));
    }

    /// A wait that began with the port closed ends within about one probe interval of the port
    /// opening, long before the back-off delay; one that began with the port open waits it out.
    #[tokio::test]
    async fn a_wait_ends_when_the_broker_port_opens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("amqp://127.0.0.1:{port}/%2f");
        let mut shutdown = Shutdown::new(std::future::pending());
        let opener = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap()
        });
        // Ending as BrokerBack rather than Elapsed is what shows it did not wait out the 30 s.
        let waited = wait_or_broker_back(&url, Duration::from_secs(30), &mut shutdown).await;
        assert_eq!(waited, Waited::BrokerBack);
        let _listener = opener.await.unwrap();
        let waited = wait_or_broker_back(&url, Duration::from_millis(300), &mut shutdown).await;
        assert_eq!(
            waited,
            Waited::Elapsed,
            "an open port does not shorten the back-off"
        );
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::new(2);
        let d: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert!(d[0] >= 500 && d[0] <= 625, "{d:?}");
        assert!(d[1] >= 1000 && d[1] <= 1250, "{d:?}");
        assert!(d[4] >= 2000 && d[4] <= 2500, "{d:?}");
        b.reset();
        assert!(b.next_delay().as_millis() <= 625);
    }
}
