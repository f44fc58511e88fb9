//! Error text for logs and answers.

/// An error with its causes on one line. Library errors often keep the useful part (the server's
/// message, "connection refused") in their source chain, which `Display` alone leaves out; a cause
/// whose text the line already holds is not repeated.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a fixed text and an optional cause.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<dyn std::error::Error + 'static>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref()
        }
    }

    #[test]
    fn error_chain_includes_causes_once() {
        let err = Layer(
            "db error",
            Some(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))),
        );
        assert_eq!(error_chain(&err), "db error: connection refused");
        // A cause the outer text already quotes is not repeated; deeper causes still follow.
        let err = Layer(
            "request failed: timed out",
            Some(Box::new(Layer(
                "timed out",
                Some(Box::new(Layer("after 30 s", None))),
            ))),
        );
        assert_eq!(error_chain(&err), "request failed: timed out: after 30 s");
        assert_eq!(error_chain(&Layer("alone", None)), "alone");
    }
}
