//! How long one rule condition can take at worst: pathological patterns against values at the
//! longest length each engine is given (README, "Regex dialect"). Run it alone on a quiet
//! machine:
//!
//! ```sh
//! cargo run --release --example rules_worst_case
//! ```
//!
//! Each line: the slowest of 5 runs of one rule over one value, and what the rule decided.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use hookrelay::config::rules::BACKTRACKING_MAX_INPUT;
use hookrelay::normalize::victorops::PAYLOAD_VALUE_LIMIT;
use hookrelay::Config;

fn main() {
    let linear = [
        r"(?si).*hostname: ([^\n]+).*service: ([^\n]+).*",
        r"(a+)+b",
        r"(.*a){20}",
        r"(?i)(\w+\s*)*x",
        r"(.{0,50}){20}x",
        r"(\w+\s?){12}",
    ];
    let backtracking = [
        r"(a|a)*\1c",
        r"(.*?)(.*?)(.*?)(.*?)\1\2\3\4z",
        r".*(\w+)(?=;)\1.*",
        r"(?:(?!.*q).)*",
        r"(?:(?<=^.*)a)*",
        r"(?:(?<!q.*)a)*x",
        r"(?i).*(?<!x)(\w+)\s*=\s*\1.*",
    ];
    let values = |n: usize| {
        [
            ("a*n", "a".repeat(n)),
            ("a*n+b", format!("{}b", "a".repeat(n - 1))),
            ("(ab)*n", "ab".repeat(n / 2)),
            ("'x=1; '*n", "x=1; ".repeat(n / 5)),
        ]
    };
    println!("linear patterns, values of {PAYLOAD_VALUE_LIMIT} characters (the longest field):");
    run(&linear, &values(PAYLOAD_VALUE_LIMIT), "\"1\"");
    println!("\nthe same, with the rule using a capture group (extracted, not only decided):");
    run(&linear, &values(PAYLOAD_VALUE_LIMIT), "'${{\\1}}'");
    println!(
        "\nbacktracking patterns, values of {BACKTRACKING_MAX_INPUT} characters (the most they are tried on):"
    );
    run(&backtracking, &values(BACKTRACKING_MAX_INPUT), "\"1\"");
    println!(
        "\nbacktracking patterns, values of {PAYLOAD_VALUE_LIMIT} characters (over the cap: not tried):"
    );
    run(
        &backtracking[..2],
        &values(PAYLOAD_VALUE_LIMIT)[..1],
        "\"1\"",
    );
}

/// `set` is the TOML value the rule sets `hit` to.
fn run(patterns: &[&str], values: &[(&str, String)], set: &str) {
    let mut worst = 0.0f64;
    for pattern in patterns {
        let text = format!(
            "[[sources]]\nname = \"s\"\nkind = \"statusgator\"\npath = \"/s\"\n[[rules]]\nname = \"r\"\nfield = \"v\"\nregex = '{pattern}'\nset = {{ hit = {set} }}\n"
        );
        let config = Config::parse(&text, "worst-case.toml", Path::new(".")).expect("valid rule");
        for (name, value) in values {
            let mut slowest = 0.0f64;
            let mut outcome = String::new();
            for _ in 0..5 {
                let mut alert = BTreeMap::from([("v".to_owned(), value.clone())]);
                let t = Instant::now();
                let trace = config.rules.apply(&mut alert, &serde_json::Value::Null);
                slowest = slowest.max(t.elapsed().as_secs_f64() * 1000.0);
                outcome = match (trace.matched.is_empty(), trace.gave_up.first()) {
                    (_, Some(why)) => format!("gave up: {}", why.split(": ").nth(2).unwrap_or(why)),
                    (false, None) => "match".into(),
                    (true, None) => "no match".into(),
                };
            }
            worst = worst.max(slowest);
            println!("{slowest:>9.2} ms  {pattern:<45} {name:<10} {outcome}");
        }
    }
    println!("worst: {worst:.2} ms");
}
