//! Validation of the outbound settings that go beyond a plain webhook: Standard Webhooks
//! signing secrets (`signing_secrets`), a `statushub` target's `fire_on` and ordering key, and
//! the `victorops` target.

use toml::Spanned;

use super::raw::RawTarget;
use super::{Result, Validator};
use crate::targets::incident::{Change, FireOn};
use crate::targets::signing::SigningKeys;
use crate::targets::{VictoropsSpec, VICTOROPS_REST_PATH};
use crate::template::{ContextNeeds, Escape, Templates};

impl Validator<'_> {
    /// `signing_secrets` (a list) or `signing_secrets_env` (a variable holding them,
    /// comma-separated); none: requests are not signed.
    pub(super) fn signing(&self, i: usize, t: &RawTarget) -> Result<SigningKeys> {
        let key = |k: &str| format!("targets[{i}].{k}");
        let (secrets, span, k) = match (&t.signing_secrets, &t.signing_secrets_env) {
            (None, None) => return Ok(SigningKeys::default()),
            (Some(list), Some(_)) => {
                return self.err(
                    Some(list.span()),
                    &key("signing_secrets"),
                    "set either signing_secrets or signing_secrets_env, not both",
                )
            }
            (Some(list), None) => (list.get_ref().clone(), list.span(), key("signing_secrets")),
            (None, Some(var)) => match std::env::var(var.get_ref()) {
                Ok(v) => (
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                    var.span(),
                    key("signing_secrets_env"),
                ),
                Err(_) => {
                    return self.err(
                        Some(var.span()),
                        &key("signing_secrets_env"),
                        format!("environment variable {} is not set", var.get_ref()),
                    )
                }
            },
        };
        if secrets.is_empty() {
            return self.err(
                Some(span),
                &k,
                "no secrets: list at least one whsec_… secret, or leave the key out",
            );
        }
        SigningKeys::parse(&secrets).or_else(|e| self.err(Some(span), &k, e))
    }

    /// A `statushub` target's `fire_on`: the incident changes that send a request.
    pub(super) fn fire_on(&self, i: usize, t: &RawTarget) -> Result<FireOn> {
        let Some(list) = &t.fire_on else {
            return Ok(FireOn::default());
        };
        let key = format!("targets[{i}].fire_on");
        if list.get_ref().is_empty() {
            return self.err(
                Some(list.span()),
                &key,
                "an empty list would never fire; leave fire_on out for the default",
            );
        }
        let mut changes = Vec::new();
        for name in list.get_ref() {
            match Change::from_name(name) {
                Some(c) if !changes.contains(&c) => changes.push(c),
                Some(_) => {}
                None => {
                    let known: Vec<&str> = Change::ALL.iter().map(|c| c.name()).collect();
                    return self.err(
                        Some(list.span()),
                        &key,
                        format!("{name:?} is not one of {}", known.join(", ")),
                    );
                }
            }
        }
        Ok(FireOn::new(changes))
    }

    /// A `statushub` target keeps its incidents per ordering key, so the key must be the
    /// entity: another one would merge or split incidents.
    pub(super) fn statushub_ordering_key(&self, i: usize, t: &RawTarget) -> Result<()> {
        let Some(src) = &t.ordering_key else {
            return Ok(());
        };
        if super::alert_field(src.get_ref()) == Some("entity_id") {
            return Ok(());
        }
        self.err(
            Some(src.span()),
            &format!("targets[{i}].ordering_key"),
            "a statushub target keeps each entity's incident in the order of its alerts, so \
             its ordering key is always {{{{alert.entity_id}}}}; to merge entities, set \
             entity_id with a rule",
        )
    }

    /// A `victorops` target: the REST endpoint URL, inline or from the environment.
    pub(super) fn victorops(
        &self,
        i: usize,
        name: &str,
        t: &RawTarget,
        templates: &mut Templates,
    ) -> Result<VictoropsSpec> {
        let key = |k: &str| format!("targets[{i}].{k}");
        let Some(text) = self.secret(&t.url, &t.url_env, &key("url"), &key("url_env"))? else {
            return self.err(
                Some(t.name.span()),
                &key("url"),
                format!(
                    "a \"victorops\" target needs its REST endpoint url (or url_env), like \
                     https://alert.victorops.com{VICTOROPS_REST_PATH}<api key>/<routing key>"
                ),
            );
        };
        let span = t
            .url
            .as_ref()
            .or(t.url_env.as_ref())
            .map(|v| v.span())
            .unwrap_or_else(|| t.name.span());
        let url = Spanned::new(span.clone(), text);
        let origin = self.origin(&url, &key("url"))?;
        let after_origin = url
            .get_ref()
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|p| &rest[p..]))
            .unwrap_or("");
        let api_key = after_origin
            .strip_prefix(VICTOROPS_REST_PATH)
            .and_then(|rest| rest.split(['/', '?', '#']).next())
            .unwrap_or("");
        if api_key.is_empty() {
            return self.err(
                Some(span),
                &key("url"),
                format!(
                    "is not a VictorOps REST endpoint URL: its path must be \
                     {VICTOROPS_REST_PATH}<api key>/<routing key>"
                ),
            );
        }
        let url_ref = templates
            .register(Escape::Url, &format!("{name}/url"), url.get_ref())
            .or_else(|e| self.err(Some(span), &key("url"), format!("bad template: {e}")))?;
        Ok(VictoropsSpec {
            url: url_ref,
            origin,
            needs: ContextNeeds::of_templates(&[url.get_ref()]),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, TargetKind};

    const SOURCE: &str = "[[sources]]\nname = \"pd\"\nkind = \"pagerduty\"\npath = \"/pd\"\n";

    fn check(target: &str) -> Result<Config, String> {
        Config::parse(
            &format!("{SOURCE}[[targets]]\n{target}"),
            "t.toml",
            std::path::Path::new("."),
        )
        .map_err(|e| e.to_string())
    }

    /// Guards the new keys' validation: each mistake names its key and line.
    #[test]
    fn outbound_settings_are_checked() {
        let e = check("name = \"h\"\nkind = \"statushub\"\nfire_on = [\"triggered\", \"paged\"]\n")
            .unwrap_err();
        assert!(
            e.contains("t.toml:8: targets[0].fire_on: \"paged\" is not one of"),
            "{e}"
        );
        let e = check(
            "name = \"h\"\nkind = \"statushub\"\nordering_key = \"{{alert.service_name}}\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("targets[0].ordering_key: a statushub target"),
            "{e}"
        );
        let e = check("name = \"w\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\nsigning_secrets = [\"whsec_c2hvcnQ=\"]\n")
            .unwrap_err();
        assert!(
            e.contains("targets[0].signing_secrets: secret 1: decodes to 5 bytes"),
            "{e}"
        );
        let e = check(
            "name = \"v\"\nkind = \"victorops\"\nurl = \"https://alert.victorops.com/hooks/x\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("targets[0].url: is not a VictorOps REST endpoint URL"),
            "{e}"
        );
        let e = check("name = \"v\"\nkind = \"victorops\"\n").unwrap_err();
        assert!(e.contains("needs its REST endpoint url"), "{e}");
        let e = check("name = \"f\"\nkind = \"file\"\npath = \"x\"\nfire_on = [\"updated\"]\n")
            .unwrap_err();
        assert!(
            e.contains("a \"file\" target has no key \"fire_on\""),
            "{e}"
        );

        let c = check("name = \"v\"\nkind = \"victorops\"\nurl = \"https://alert.victorops.com/integrations/generic/20131114/alert/k3y/${{ALERT.routing_key}}\"\n").unwrap();
        let TargetKind::Victorops(spec) = &c.targets[0].kind else {
            panic!("a victorops target")
        };
        assert!(spec.needs.vo, "the URL reads a VictorOps variable");
        let c = check("name = \"h\"\nkind = \"statushub\"\nfire_on = [\"resolved\", \"updated\"]\nordering_key = \"{{alert.entity_id}}\"\n").unwrap();
        let TargetKind::Statushub(spec) = &c.targets[0].kind else {
            panic!("a statushub target")
        };
        assert_eq!(
            spec.fire_on.as_ref().unwrap().names(),
            ["resolved", "updated"]
        );
    }
}
