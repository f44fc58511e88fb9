//! A rule's `when.topic` patterns.

use taskbot::text::topic_pattern_matches;

/// A topic pattern: segments separated by dots; `*` inside a segment matches any characters of
/// that segment, a segment `#` matches any number of segments (as in AMQP). Kept split, because
/// the engine matches one topic against the patterns of every rule.
#[derive(Debug, Clone)]
pub struct TopicPattern {
    segments: Vec<String>,
}

impl TopicPattern {
    pub fn new(pattern: &str) -> Self {
        TopicPattern {
            segments: pattern.split('.').map(str::to_string).collect(),
        }
    }

    /// The pattern as written.
    pub fn text(&self) -> String {
        self.segments.join(".")
    }

    pub fn matches(&self, topic: &str) -> bool {
        let topic: Vec<&str> = topic.split('.').collect();
        self.matches_segments(&topic)
    }

    /// Match a topic already split at its dots.
    pub fn matches_segments(&self, topic: &[&str]) -> bool {
        topic_pattern_matches(&self.segments, topic)
    }
}
