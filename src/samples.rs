//! Sample payloads built into the binary for `hookrelay send-test`, so a new user sees the
//! whole path (ingest, store, delivery) in two commands. They are the test fixtures.

use crate::normalize::SourceKind;

pub struct Sample {
    pub name: &'static str,
    pub kind: SourceKind,
    pub content_type: &'static str,
    pub body: &'static [u8],
    pub about: &'static str,
}

macro_rules! fixture {
    ($file:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $file
        ))
    };
}

const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

pub const SAMPLES: &[Sample] = &[
    Sample {
        name: "statusgator-v1",
        kind: SourceKind::Statusgator,
        content_type: FORM,
        body: fixture!("statusgator-v1.form"),
        about: "StatusGator v1 form: CloudFlare up",
    },
    Sample {
        name: "statusgator-v2",
        kind: SourceKind::Statusgator,
        content_type: JSON,
        body: fixture!("statusgator-v2.json"),
        about: "StatusGator v2: Heroku warn",
    },
    Sample {
        name: "statusgator-v3",
        kind: SourceKind::Statusgator,
        content_type: JSON,
        body: fixture!("statusgator-v3-status-change.json"),
        about: "StatusGator v3 StatusChange: OpenAI up",
    },
    Sample {
        name: "statusgator-v3-early-warning",
        kind: SourceKind::Statusgator,
        content_type: JSON,
        body: fixture!("statusgator-v3-early-warning.json"),
        about: "StatusGator v3 EarlyWarningSignal: Resideo",
    },
    Sample {
        name: "pagerduty-v1",
        kind: SourceKind::Pagerduty,
        content_type: JSON,
        body: fixture!("pagerduty-v1-trigger.json"),
        about: "PagerDuty V1 incident.trigger",
    },
    Sample {
        name: "pagerduty-v2",
        kind: SourceKind::Pagerduty,
        content_type: JSON,
        body: fixture!("pagerduty-v2-trigger.json"),
        about: "PagerDuty V2 incident.trigger",
    },
    Sample {
        name: "pagerduty-v3",
        kind: SourceKind::Pagerduty,
        content_type: JSON,
        body: fixture!("pagerduty-v3-incident-triggered.json"),
        about: "PagerDuty V3 incident.triggered",
    },
    Sample {
        name: "pagerduty-v3-resolved",
        kind: SourceKind::Pagerduty,
        content_type: JSON,
        body: fixture!("pagerduty-v3-incident-resolved.json"),
        about: "PagerDuty V3 incident.resolved",
    },
    Sample {
        name: "pagerduty-ping",
        kind: SourceKind::Pagerduty,
        content_type: JSON,
        body: fixture!("pagerduty-v3-ping.json"),
        about: "PagerDuty V3 pagey.ping",
    },
];

pub fn find(name: &str) -> Option<&'static Sample> {
    SAMPLES.iter().find(|s| s.name == name)
}
