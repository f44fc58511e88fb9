//! One place to set up logging for every service.

use std::io::IsTerminal as _;

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// Install the global subscriber: text for people, JSON for log collectors. `LOG_FORMAT`
/// (`text`/`json`) and `RUST_LOG` override the config so an operator can turn up one service
/// without editing the shared file. Calling it twice is harmless (tests do). The text has colour
/// only on a terminal ([`colour`]): the logs of a service started by systemd, `make run` or a
/// container end up in files and journals, where escape codes are noise.
pub fn init(config: &LogConfig) {
    let format = match std::env::var("LOG_FORMAT").ok().as_deref() {
        Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        _ => config.format,
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    );
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Whether log text gets colour: only when stderr is a terminal, and neither `NO_COLOR` (set and
/// not empty, <https://no-color.org>) nor `TERM=dumb` asks for none.
pub fn colour(
    terminal: bool,
    no_color: Option<&std::ffi::OsStr>,
    term: Option<&std::ffi::OsStr>,
) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty()) && term.is_none_or(|t| t != "dumb")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_that_wants_it() {
        assert!(colour(true, None, Some(OsStr::new("xterm-256color"))));
        assert!(
            !colour(false, None, Some(OsStr::new("xterm"))),
            "a file or a pipe"
        );
        assert!(!colour(true, Some(OsStr::new("1")), None), "NO_COLOR");
        assert!(
            colour(true, Some(OsStr::new("")), None),
            "an empty NO_COLOR counts as unset"
        );
        assert!(!colour(true, None, Some(OsStr::new("dumb"))));
    }
}
