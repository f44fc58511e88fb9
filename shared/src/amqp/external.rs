//! Connecting to a broker that is not Taskbot's: Fedora's bus, as fedora-messaging connects to
//! it. `amqps://` with TLS 1.2 or later, the server's certificate checked against a CA file (or
//! the system's CAs) and its name against the URL's host, a client certificate and key in PEM,
//! and SASL EXTERNAL (the broker takes the user name from the certificate); or `amqp://` with a
//! password.
//!
//! lapin's own TLS set-up takes PKCS#12 identities only and leaves the protocol floor at the TLS
//! library's default, so the TLS stream is made here and handed to [`Connection::connector`].

use std::path::Path;

use lapin::tcp::{AMQPUriTcpExt as _, TLSConfig};
use lapin::types::AMQPValue;
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use lapin::{Connection, ConnectionProperties};

use crate::config::FedoraMessagingBridgeConfig;

/// How to reach and log in to an external broker, checked and read once (files included) so a
/// reconnection never fails on a configuration problem.
#[derive(Clone)]
pub struct ExternalBroker {
    uri: AMQPUri,
    /// For `amqps://` only.
    tls: Option<native_tls::TlsConnector>,
}

impl std::fmt::Debug for ExternalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalBroker")
            .field("host", &self.uri.authority.host)
            .field("port", &self.uri.authority.port)
            .field("vhost", &self.uri.vhost)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ExternalBroker {
    /// Read `config` (its URL with any password already resolved, its certificate files). The
    /// error names the key at fault.
    pub fn new(config: &FedoraMessagingBridgeConfig) -> Result<ExternalBroker, String> {
        let mut uri: AMQPUri = config
            .url
            .parse()
            .map_err(|e| format!("fedora_messaging_bridge.url: {e}"))?;
        let has_cert = match (&config.client_cert, &config.client_key) {
            (Some(_), Some(_)) => true,
            (None, None) => false,
            _ => {
                return Err(
                    "fedora_messaging_bridge.client_cert and client_key: give both or \
                            neither"
                        .into(),
                )
            }
        };
        if has_cert && uri.query.auth_mechanism.is_none() {
            uri.query.auth_mechanism = Some(SASLMechanism::External);
        }
        let tls = match uri.scheme {
            AMQPScheme::AMQPS => Some(tls_connector(config)?),
            AMQPScheme::AMQP if has_cert || config.ca_file.is_some() => {
                return Err(
                    "fedora_messaging_bridge.url: certificates are set but the URL is \
                            amqp://, which has no TLS (use amqps://)"
                        .into(),
                )
            }
            AMQPScheme::AMQP => None,
        };
        Ok(ExternalBroker { uri, tls })
    }

    /// `host:port/vhost`, for logs and event sources (no credentials).
    pub fn describe(&self) -> String {
        let a = &self.uri.authority;
        format!(
            "{}:{}/{}",
            a.host,
            a.port,
            crate::text::percent_encode(&self.uri.vhost)
        )
    }

    /// The user the broker is asked to log in (with EXTERNAL the certificate decides).
    pub fn user(&self) -> &str {
        &self.uri.authority.userinfo.username
    }

    /// Connect once, named `name` in the broker's connection list.
    pub async fn connect(&self, name: &str) -> lapin::Result<Connection> {
        let mut props = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio)
            .with_connection_name(name.into());
        props
            .client_properties
            .insert("product".into(), AMQPValue::LongString("taskbot".into()));
        let tls = self.tls.clone();
        Connection::connector(
            self.uri.clone(),
            Box::new(move |uri: &AMQPUri| match &tls {
                None => uri.connect_with_config(TLSConfig::default()),
                Some(connector) => {
                    let address = (uri.authority.host.as_str(), uri.authority.port);
                    let stream = lapin::tcp::TcpStream::connect(address)?
                        .into_native_tls(connector, &uri.authority.host)?;
                    stream.set_nonblocking(true)?;
                    Ok(stream)
                }
            }),
            props,
        )
        .await
    }
}

/// TLS 1.2 or later; the CA file's certificates as the only roots when it is given; the client
/// certificate and key when they are.
fn tls_connector(config: &FedoraMessagingBridgeConfig) -> Result<native_tls::TlsConnector, String> {
    let mut builder = native_tls::TlsConnector::builder();
    builder.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    if let Some(file) = &config.ca_file {
        let pem = read("fedora_messaging_bridge.ca_file", file)?;
        let certs = openssl::x509::X509::stack_from_pem(&pem)
            .map_err(|e| format!("fedora_messaging_bridge.ca_file {}: {e}", file.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "fedora_messaging_bridge.ca_file {}: no certificate in it",
                file.display()
            ));
        }
        for cert in certs {
            let der = cert.to_der().map_err(|e| e.to_string())?;
            let cert = native_tls::Certificate::from_der(&der).map_err(|e| e.to_string())?;
            builder.add_root_certificate(cert);
        }
        builder.disable_built_in_roots(true);
    }
    if let (Some(cert_file), Some(key_file)) = (&config.client_cert, &config.client_key) {
        let cert = read("fedora_messaging_bridge.client_cert", cert_file)?;
        let key = read("fedora_messaging_bridge.client_key", key_file)?;
        // native-tls takes PKCS#8 only; an RSA ("BEGIN RSA PRIVATE KEY") key is converted.
        let key = openssl::pkey::PKey::private_key_from_pem(&key)
            .and_then(|k| k.private_key_to_pem_pkcs8())
            .map_err(|e| {
                format!(
                    "fedora_messaging_bridge.client_key {}: not a PEM private key: {e}",
                    key_file.display()
                )
            })?;
        let identity = native_tls::Identity::from_pkcs8(&cert, &key).map_err(|e| {
            format!(
                "fedora_messaging_bridge.client_cert {}: {e}",
                cert_file.display()
            )
        })?;
        builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| format!("fedora_messaging_bridge: cannot set up TLS: {e}"))
}

fn read(key: &str, file: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(file).map_err(|e| format!("{key}: cannot read {}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_mean_external_and_need_tls() {
        let mut config = FedoraMessagingBridgeConfig {
            url: "amqp://u:p@127.0.0.1:5672/%2Fpubsub".into(),
            ..Default::default()
        };
        let plain = ExternalBroker::new(&config).unwrap();
        assert!(plain.tls.is_none());
        assert_eq!(plain.uri.query.auth_mechanism, None);
        assert_eq!(plain.describe(), "127.0.0.1:5672/%2Fpubsub");
        assert_eq!(plain.user(), "u");
        config.client_cert = Some("/nonexistent/cert.pem".into());
        assert!(ExternalBroker::new(&config)
            .unwrap_err()
            .contains("give both or neither"));
        config.client_key = Some("/nonexistent/key.pem".into());
        assert!(ExternalBroker::new(&config)
            .unwrap_err()
            .contains("amqp://, which has no TLS"));
        config.url = "amqps://fedora:@rabbitmq.fedoraproject.org/%2Fpublic_pubsub".into();
        let err = ExternalBroker::new(&config).unwrap_err();
        assert!(
            err.starts_with("fedora_messaging_bridge.client_cert: cannot read /nonexistent"),
            "{err}"
        );
    }
}
