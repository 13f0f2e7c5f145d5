use super::render::{bytes, progress_text, short_error, table, utc};
use super::*;

#[test]
fn url_comes_from_flag_then_environment_then_default() {
    assert_eq!(conductor_url(Some("http://h:1")), "http://h:1");
    // The environment is process-wide; only the flag case is independent of it.
    let from_env = std::env::var(URL_ENV).ok().filter(|u| !u.is_empty());
    assert_eq!(
        conductor_url(None),
        from_env.unwrap_or_else(|| DEFAULT_URL.to_string())
    );
}

#[test]
fn client_accepts_urls_with_or_without_v1() {
    assert_eq!(Client::new("http://h:1/v1/").url(), "http://h:1");
    assert_eq!(Client::new("http://h:1/").url(), "http://h:1");
}

#[test]
fn names_are_encoded_as_one_path_segment() {
    assert_eq!(segment("node-1.a_b~"), "node-1.a_b~");
    assert_eq!(segment("a b/c"), "a%20b%2Fc");
}

#[test]
fn refusals_keep_the_conductors_message_and_verbs() {
    let body = r#"{"error": {"code": 409, "message": "cannot deploy a node in state \"enroll\"", "allowed": ["manage"]}}"#;
    let err = refusal(409, body);
    assert_eq!(
        err.to_string(),
        "cannot deploy a node in state \"enroll\" (allowed verbs: manage)"
    );
    let worded = r#"{"error": {"code": 409, "message": "no; allowed verbs: manage", "allowed": ["manage"]}}"#;
    assert_eq!(
        refusal(409, worded).to_string(),
        "no; allowed verbs: manage"
    );
    assert_eq!(
        refusal(502, "bad gateway").to_string(),
        "HTTP 502: bad gateway"
    );
}

#[test]
fn tables_align_columns_by_characters() {
    let out = table(
        &["NAME", "STATE"],
        &[
            vec!["é-1".into(), "available".into()],
            vec!["node-10".into(), "".into()],
        ],
    );
    assert_eq!(out, "NAME     STATE\né-1      available\nnode-10\n");
}

#[test]
fn short_errors_keep_the_first_line_and_mark_cuts() {
    assert_eq!(short_error(None), "");
    assert_eq!(short_error(Some("power failed")), "power failed");
    assert_eq!(short_error(Some("a\nb")), "a...");
    let long = "x".repeat(100);
    let cut = short_error(Some(&long));
    assert_eq!(cut.chars().count(), 48);
    assert!(cut.ends_with("..."));
}

#[test]
fn byte_counts_and_percentages() {
    assert_eq!(bytes(512), "512 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(1 << 30), "1.0 GiB");
    assert_eq!(
        progress_text(512 << 20, Some(1 << 30)),
        "512.0 MiB / 1.0 GiB (50%)"
    );
    assert_eq!(progress_text(7, None), "7 B");
}

#[test]
fn utc_dates_match_known_instants() {
    // Oracle: `date -u -d @SECONDS '+%F %T'`.
    assert_eq!(utc(0), "1970-01-01 00:00:00");
    assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
    assert_eq!(utc(1_795_289_964), "2026-11-21 19:39:24");
    assert_eq!(utc(-1), "1969-12-31 23:59:59");
}

#[test]
fn node_records_keep_every_field_for_json() {
    let wire = serde_json::json!({
        "uuid": "8a2b1c56-07b4-4c61-9d5b-0c7a3b7f2e11", "name": "n1",
        "provision_state": "manageable", "target_provision_state": null,
        "power_state": "power off", "last_error": null,
        "properties": {"capabilities": {"profile": "compute"}},
        "progress": {"bytes_written": 5, "bytes_total": 10},
        "driver": "ipmi", "macs": ["52:54:00:00:00:01"]
    });
    let record: NodeRecord = serde_json::from_value(wire.clone()).unwrap();
    assert_eq!(record.profile(), Some("compute"));
    assert_eq!(record.progress_bytes(), Some((5, Some(10))));
    assert_eq!(serde_json::to_value(&record).unwrap(), wire);
}
