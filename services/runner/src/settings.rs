//! The runner's checks of its own configuration section, made where the runner starts rather than
//! in the shared configuration (no other service needs `runner.arch`).

use taskbot::config::ConfigError;
use taskbot::Config;

/// The arch whose run queue this runner consumes. Unset is a bad configuration (exit status 2),
/// as a bad value the loader finds is.
pub fn arch(config: &Config) -> Result<&str, ConfigError> {
    config.runner.arch.as_deref().ok_or_else(|| {
        ConfigError::new("runner.arch: not set (use --arch or TASKBOT_RUNNER__ARCH)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arch_is_required() {
        let mut config = Config::default();
        let err = arch(&config).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid configuration:\nrunner.arch: not set (use --arch or TASKBOT_RUNNER__ARCH)"
        );
        config.runner.arch = Some("aarch64".into());
        assert_eq!(arch(&config).unwrap(), "aarch64");
    }
}
