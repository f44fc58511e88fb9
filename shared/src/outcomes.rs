//! Outcome profiles (`reporter.resultsdb_outcomes`): which outcomes a ResultsDB instance accepts
//! and what each of Taskbot's outcomes is posted as there.
//!
//! ResultsDB refuses (HTTP 400) an outcome it is not configured for: upstream accepts only
//! PASSED, INFO, FAILED and NEEDS_INSPECTION; Fedora's instance adds CRASHED, QUEUED and RUNNING
//! and refuses ERROR, ABORTED and WAIVED. A result refused for its outcome would be missing from
//! ResultsDB, and gating would wait for it forever, so the sink maps every outcome the instance
//! does not accept onto one it does (keeping the original in the note and in the `taskbot_outcome`
//! data key). The profile is checked when the reporter starts: an outcome mapped onto one the
//! instance does not accept, a failure mapped onto a pass, or an interim state mapped onto a
//! verdict is a configuration error.
//!
//! ```toml
//! [reporter]
//! resultsdb_outcomes = "fedora"      # or "upstream" (the default)
//!
//! # or a profile of one's own:
//! [reporter.resultsdb_outcomes]
//! accepted = ["PASSED", "INFO", "FAILED", "NEEDS_INSPECTION", "CRASHED", "QUEUED", "RUNNING"]
//! map = { ABORTED = "CRASHED" }      # QUEUED / RUNNING may map to "skip": not posted
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::messages::Outcome;

/// The value that, in `map`, means "do not post this interim state".
pub const SKIP: &str = "skip";

/// `reporter.resultsdb_outcomes` as written: a shipped profile's name or a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OutcomeProfile {
    /// `"upstream"` or `"fedora"`.
    Named(String),
    Custom(CustomProfile),
}

impl Default for OutcomeProfile {
    fn default() -> Self {
        OutcomeProfile::Named("upstream".into())
    }
}

/// A profile of one's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomProfile {
    /// The outcomes the instance accepts (its `RESULTS_OUTCOMES`, default ones included).
    pub accepted: Vec<String>,
    /// Taskbot outcome → outcome posted instead (or `skip`, for QUEUED and RUNNING only).
    #[serde(default)]
    pub map: BTreeMap<String, String>,
}

/// What one Taskbot outcome is posted as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// As itself.
    Same,
    /// As this other outcome (the original kept in the note and data).
    As(Outcome),
    /// Not at all (an interim state the instance does not accept).
    Skip,
}

/// A checked profile: what every outcome is posted as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeMap {
    pub name: String,
    posted: BTreeMap<&'static str, Posted>,
}

const UPSTREAM: [Outcome; 4] = [
    Outcome::Passed,
    Outcome::Info,
    Outcome::Failed,
    Outcome::NeedsInspection,
];

impl OutcomeProfile {
    /// The shipped profiles:
    /// - `upstream`: ResultsDB's defaults only; ABORTED and CRASHED are posted as
    ///   NEEDS_INSPECTION (a person must look; gating counts it as failed), QUEUED and RUNNING
    ///   are not posted.
    /// - `fedora`: Fedora's instance (the defaults plus CRASHED, QUEUED, RUNNING); ABORTED (a
    ///   task that ran out of time) is posted as CRASHED, which gating counts as failed.
    pub fn shipped(name: &str) -> Option<CustomProfile> {
        let names = |list: &[Outcome]| list.iter().map(|o| o.as_str().to_string()).collect();
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        match name {
            "upstream" => Some(CustomProfile {
                accepted: names(&UPSTREAM),
                map: map(&[
                    ("ABORTED", "NEEDS_INSPECTION"),
                    ("CRASHED", "NEEDS_INSPECTION"),
                    ("QUEUED", SKIP),
                    ("RUNNING", SKIP),
                ]),
            }),
            "fedora" => {
                let mut accepted: Vec<String> = names(&UPSTREAM);
                accepted.extend(["CRASHED", "QUEUED", "RUNNING"].map(String::from));
                Some(CustomProfile {
                    accepted,
                    map: map(&[("ABORTED", "CRASHED")]),
                })
            }
            _ => None,
        }
    }

    /// Check the profile; the error names what is wrong, for a start-up failure.
    pub fn resolve(&self) -> Result<OutcomeMap, String> {
        const KEY: &str = "reporter.resultsdb_outcomes";
        let (name, profile) = match self {
            OutcomeProfile::Named(name) => (
                name.clone(),
                Self::shipped(name).ok_or_else(|| {
                    format!("{KEY}: unknown profile {name:?} (shipped: \"upstream\", \"fedora\")")
                })?,
            ),
            OutcomeProfile::Custom(p) => ("custom".to_string(), p.clone()),
        };
        let mut accepted = Vec::new();
        for text in &profile.accepted {
            let outcome = Outcome::parse(text).ok_or_else(|| {
                format!(
                    "{KEY}.accepted: {text:?} is not an outcome Taskbot posts ({})",
                    all_names()
                )
            })?;
            accepted.push(outcome);
        }
        for key in profile.map.keys() {
            if Outcome::parse(key).is_none() {
                return Err(format!(
                    "{KEY}.map: {key:?} is not a Taskbot outcome ({})",
                    all_names()
                ));
            }
        }
        let mut posted = BTreeMap::new();
        for outcome in Outcome::ALL {
            let target = profile
                .map
                .iter()
                .find(|(k, _)| Outcome::parse(k) == Some(outcome))
                .map(|(_, v)| v.trim());
            let decision = match target {
                None if accepted.contains(&outcome) => Posted::Same,
                None => {
                    return Err(format!(
                        "{KEY}: {outcome} is neither accepted nor mapped; results with it would be \
                         refused by ResultsDB (add it to accepted, or map it to an accepted outcome)"
                    ))
                }
                Some(t) if t.eq_ignore_ascii_case(SKIP) => {
                    if outcome.is_final() {
                        return Err(format!(
                            "{KEY}.map: {outcome} = \"skip\": only QUEUED and RUNNING may be \
                             skipped; a verdict must reach ResultsDB"
                        ));
                    }
                    Posted::Skip
                }
                Some(t) => {
                    let to = Outcome::parse(t).ok_or_else(|| {
                        format!("{KEY}.map: {outcome} = {t:?} is not an outcome")
                    })?;
                    if !accepted.contains(&to) {
                        return Err(format!(
                            "{KEY}.map: {outcome} = {to}, which is not accepted"
                        ));
                    }
                    if !outcome.is_final() && to != outcome {
                        return Err(format!(
                            "{KEY}.map: {outcome} = {to}: an interim state cannot be posted as a \
                             verdict (gating would take it for one); accept it or skip it"
                        ));
                    }
                    if !outcome.passes() && to.passes() {
                        return Err(format!(
                            "{KEY}.map: {outcome} = {to} would make gating pass what did not"
                        ));
                    }
                    if to == outcome {
                        Posted::Same
                    } else {
                        Posted::As(to)
                    }
                }
            };
            posted.insert(outcome.as_str(), decision);
        }
        Ok(OutcomeMap { name, posted })
    }
}

fn all_names() -> String {
    Outcome::ALL.map(|o| o.as_str()).join(", ")
}

impl OutcomeMap {
    /// What `outcome` is posted as.
    pub fn posted(&self, outcome: Outcome) -> &Posted {
        self.posted.get(outcome.as_str()).unwrap_or(&Posted::Same)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custom(accepted: &[&str], map: &[(&str, &str)]) -> OutcomeProfile {
        OutcomeProfile::Custom(CustomProfile {
            accepted: accepted.iter().map(|s| s.to_string()).collect(),
            map: map
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        })
    }

    #[test]
    fn the_fedora_profile_posts_aborted_as_crashed_and_the_rest_as_they_are() {
        let m = OutcomeProfile::Named("fedora".into()).resolve().unwrap();
        assert_eq!(m.posted(Outcome::Aborted), &Posted::As(Outcome::Crashed));
        for o in [
            Outcome::Passed,
            Outcome::Info,
            Outcome::Failed,
            Outcome::NeedsInspection,
            Outcome::Crashed,
            Outcome::Queued,
            Outcome::Running,
        ] {
            assert_eq!(m.posted(o), &Posted::Same, "{o}");
        }
    }

    #[test]
    fn the_upstream_default_profile_maps_onto_the_four_and_skips_interim_states() {
        let m = OutcomeProfile::default().resolve().unwrap();
        assert_eq!(m.name, "upstream");
        assert_eq!(
            m.posted(Outcome::Aborted),
            &Posted::As(Outcome::NeedsInspection)
        );
        assert_eq!(
            m.posted(Outcome::Crashed),
            &Posted::As(Outcome::NeedsInspection)
        );
        assert_eq!(m.posted(Outcome::Queued), &Posted::Skip);
        assert_eq!(m.posted(Outcome::Running), &Posted::Skip);
        assert_eq!(m.posted(Outcome::Failed), &Posted::Same);
    }

    #[test]
    fn bad_profiles_are_refused_saying_why() {
        let cases = [
            (OutcomeProfile::Named("fedroa".into()), "unknown profile"),
            (
                custom(&["PASSED", "WAIVED"], &[]),
                "\"WAIVED\" is not an outcome",
            ),
            (
                custom(&["PASSED", "INFO", "FAILED"], &[]),
                "NEEDS_INSPECTION is neither accepted nor mapped",
            ),
            (
                custom(
                    &["PASSED", "INFO", "FAILED", "NEEDS_INSPECTION"],
                    &[
                        ("ABORTED", "CRASHED"),
                        ("CRASHED", "FAILED"),
                        ("QUEUED", "skip"),
                        ("RUNNING", "skip"),
                    ],
                ),
                "ABORTED = CRASHED, which is not accepted",
            ),
            (
                custom(
                    &["PASSED", "INFO", "FAILED", "NEEDS_INSPECTION"],
                    &[
                        ("ABORTED", "PASSED"),
                        ("CRASHED", "FAILED"),
                        ("QUEUED", "skip"),
                        ("RUNNING", "skip"),
                    ],
                ),
                "would make gating pass",
            ),
            (
                custom(
                    &["PASSED", "INFO", "FAILED", "NEEDS_INSPECTION"],
                    &[
                        ("ABORTED", "FAILED"),
                        ("CRASHED", "FAILED"),
                        ("QUEUED", "INFO"),
                        ("RUNNING", "skip"),
                    ],
                ),
                "interim state cannot be posted as a verdict",
            ),
            (
                custom(
                    &["PASSED", "INFO", "FAILED", "NEEDS_INSPECTION"],
                    &[
                        ("ABORTED", "skip"),
                        ("CRASHED", "FAILED"),
                        ("QUEUED", "skip"),
                        ("RUNNING", "skip"),
                    ],
                ),
                "only QUEUED and RUNNING may be skipped",
            ),
            (
                custom(&["PASSED"], &[("GREAT", "PASSED")]),
                "\"GREAT\" is not a Taskbot outcome",
            ),
        ];
        for (profile, expected) in cases {
            let err = profile.resolve().unwrap_err();
            assert!(err.contains(expected), "{profile:?}: {err}");
            assert!(err.contains("reporter.resultsdb_outcomes"), "{err}");
        }
    }

    #[test]
    fn profiles_are_read_from_a_name_or_a_table() {
        #[derive(Deserialize)]
        struct R {
            resultsdb_outcomes: OutcomeProfile,
        }
        let read = |text: &str| -> R {
            figment::Figment::from(
                <figment::providers::Toml as figment::providers::Format>::string(text),
            )
            .extract()
            .unwrap()
        };
        let r = read("resultsdb_outcomes = \"fedora\"");
        assert_eq!(r.resultsdb_outcomes, OutcomeProfile::Named("fedora".into()));
        let r = read(
            "[resultsdb_outcomes]\naccepted = [\"PASSED\", \"INFO\", \"FAILED\", \"NEEDS_INSPECTION\", \"CRASHED\"]\nmap = { ABORTED = \"CRASHED\", QUEUED = \"skip\", RUNNING = \"skip\" }\n",
        );
        let m = r.resultsdb_outcomes.resolve().unwrap();
        assert_eq!(m.posted(Outcome::Aborted), &Posted::As(Outcome::Crashed));
        assert_eq!(m.posted(Outcome::Crashed), &Posted::Same);
    }
}
