//! Property tests ("fuzz targets") for the public request parser, [`coordinator::items::parse`], which
//! turns any `POST /items` body into items or a client error.
//!
//! Why: the body comes from anyone who can reach the public port, so no input may panic the handler
//! or overflow its stack, and every rejection must be the right 4xx (400 for a malformed body or
//! item, 413 for too many items) rather than a 500 or a crash; a valid body must give exactly the
//! items it holds, however its JSON is spelt (escapes, unicode, whitespace, field order, extra
//! fields). Checked here: arbitrary bytes and JSON-like token soup give `Ok` within the limits or
//! `BadRequest`/`TooLarge`; generated bodies parse to what a model of the rules predicts (items,
//! or the error of the first bad item, or 413); deep nesting is refused without a stack overflow;
//! every truncation of a valid body is a 400.
//!
//! Case counts are bounded (the file runs in a few seconds in debug) and failures are not persisted,
//! so running the tests writes nothing into the source tree.

use std::fmt::Write as _;

use axum::response::IntoResponse;
use coordinator::error::ApiError;
use coordinator::items::{parse, Limits};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;
use storage::Item;

/// Bounded cases, nothing written to `proptest-regressions/`.
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// The production defaults (`COORDINATOR_MAX_ID_BYTES`, `COORDINATOR_MAX_TENANT_BYTES`, `COORDINATOR_MAX_ITEMS_PER_POST`).
const DEFAULT_LIMITS: Limits = Limits {
    max_id_bytes: 256,
    max_tenant_bytes: 256,
    max_items: 10_000,
};

/// The HTTP status the client gets for `e`.
fn status(e: ApiError) -> u16 {
    e.into_response().status().as_u16()
}

/// Any outcome is fine but a panic, an item the limits forbid, or an error other than 400/413.
fn ok_or_client_error(body: &[u8], limits: Limits) -> Result<(), TestCaseError> {
    match parse(body, limits) {
        Ok(items) => {
            prop_assert!(items.len() <= limits.max_items);
            for item in &items {
                prop_assert!(!item.id.is_empty() && item.id.len() <= limits.max_id_bytes);
                prop_assert!(
                    !item.tenant.is_empty() && item.tenant.len() <= limits.max_tenant_bytes
                );
            }
            // Only a JSON array parses.
            let value: Value =
                serde_json::from_slice(body).expect("accepted a body that is not JSON");
            prop_assert_eq!(value.as_array().map(Vec::len), Some(items.len()));
        }
        Err(e @ ApiError::BadRequest(_)) => prop_assert_eq!(status(e), 400),
        Err(e @ ApiError::TooLarge(_)) => prop_assert_eq!(status(e), 413),
        Err(e) => prop_assert!(false, "not a client error: {:?}", e),
    }
    Ok(())
}

// ---- generators ----

/// Ids and tenants: empty, plain, any unicode (proptest favours odd characters), JSON's special
/// characters, and lengths around the limits.
fn text() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        '"',
        '\\',
        '/',
        '\u{0}',
        '\n',
        '\t',
        '\u{8}',
        '\u{c}',
        '\r',
        '\u{1f}',
        '\u{7f}',
        'é',
        '€',
        '😀',
        '\u{2028}',
        '\u{feff}',
        '\u{ffff}',
        '\u{10ffff}',
    ]);
    prop_oneof![
        1 => Just(String::new()),
        3 => "[a-z0-9]{1,12}",
        3 => vec(any::<char>(), 1..10).prop_map(String::from_iter),
        3 => vec(special, 1..8).prop_map(String::from_iter),
        1 => "[a-zé😀]{15,30}",
    ]
}

/// A JSON value of any kind, a little nested.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((text(), inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One of `id`, `tenant` as the body holds it.
#[derive(Clone, Debug)]
enum Field {
    Str(String),
    Missing,
    /// A value that is not a string.
    Other(Value),
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        40 => text().prop_map(Field::Str),
        1 => Just(Field::Missing),
        1 => json()
            .prop_filter("not a string", |v| !v.is_string())
            .prop_map(Field::Other),
    ]
}

/// An element of the body's array.
#[derive(Clone, Debug)]
enum Element {
    /// An object's members in body order (`id`, `tenant`, extras), each key and string value with an
    /// escaping style.
    Object(Vec<(String, Member, u8)>),
    NotObject(Value),
}

#[derive(Clone, Debug)]
enum Member {
    Field(Field),
    Extra(Value),
}

fn element() -> impl Strategy<Value = Element> {
    let extra_key = text().prop_filter("not id or tenant", |k| k != "id" && k != "tenant");
    let object = (field(), field(), vec((extra_key, json()), 0..3))
        .prop_map(|(id, tenant, extras)| {
            let mut members = vec![
                ("id".to_owned(), Member::Field(id)),
                ("tenant".to_owned(), Member::Field(tenant)),
            ];
            // Extra keys are distinct from each other too (a repeated key's last value wins).
            let mut seen = std::collections::BTreeSet::new();
            for (k, v) in extras {
                if seen.insert(k.clone()) {
                    members.push((k, Member::Extra(v)));
                }
            }
            members
        })
        .prop_flat_map(|members| (Just(members).prop_shuffle(), any::<[u8; 8]>()))
        .prop_map(|(members, styles)| {
            Element::Object(
                members
                    .into_iter()
                    .enumerate()
                    .map(|(i, (k, m))| (k, m, styles[i % 8]))
                    .collect(),
            )
        });
    prop_oneof![
        20 => object,
        1 => json().prop_filter("not an object", |v| !v.is_object()).prop_map(Element::NotObject),
    ]
}

/// A JSON string literal for `s`, escaped in one of several legal ways: minimally, with the short
/// escapes (`\n`, `\/`, ...), with `\uXXXX` for everything (surrogate pairs above U+FFFF), or mixed.
fn json_string(s: &str, style: u8) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        let mode = match style % 4 {
            3 => (i as u8 ^ style) % 3,
            m => m,
        };
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let raw_ok = c != '"' && c != '\\' && (c as u32) >= 0x20;
        match (mode, short) {
            (0, _) if raw_ok => out.push(c),
            (0 | 1, Some(esc)) => out.push_str(esc),
            (1, None) if raw_ok => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(out, "\\u{unit:04x}").unwrap();
                }
            }
        }
    }
    out.push('"');
    out
}

/// The body text, with `ws` between every two tokens.
fn render(elements: &[Element], ws: &str) -> String {
    let mut out = format!("{ws}[{ws}");
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            write!(out, "{ws},{ws}").unwrap();
        }
        match element {
            Element::NotObject(v) => out.push_str(&v.to_string()),
            Element::Object(members) => {
                out.push('{');
                out.push_str(ws);
                let mut first = true;
                for (key, member, style) in members {
                    let value = match member {
                        Member::Field(Field::Missing) => continue,
                        Member::Field(Field::Str(s)) => json_string(s, *style),
                        Member::Field(Field::Other(v)) | Member::Extra(v) => v.to_string(),
                    };
                    if !first {
                        write!(out, "{ws},{ws}").unwrap();
                    }
                    first = false;
                    let key = json_string(key, style.rotate_left(3));
                    write!(out, "{key}{ws}:{ws}{value}").unwrap();
                }
                out.push_str(ws);
                out.push('}');
            }
        }
    }
    write!(out, "{ws}]").unwrap();
    out
}

fn whitespace() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", " ", "\n", "\t \r\n  "])
}

/// What `parse` must answer, from the rules: 413 above `max_items`, else the first bad item (its
/// `id` before its `tenant`) is a 400 naming it, else the items.
#[derive(Debug, PartialEq)]
enum Expected {
    Items(Vec<Item>),
    /// Status and a piece of the message.
    Error(u16, String),
}

fn expected(elements: &[Element], limits: Limits) -> Expected {
    if elements.len() > limits.max_items {
        return Expected::Error(413, format!("{} items", elements.len()));
    }
    let mut items = Vec::new();
    for (i, element) in elements.iter().enumerate() {
        let Element::Object(members) = element else {
            return Expected::Error(400, format!("item {i} is not an object"));
        };
        let get = |name: &str, max: usize| -> Result<String, Expected> {
            let value = members.iter().find_map(|(k, m, _)| match m {
                Member::Field(f) if k == name => Some(f),
                _ => None,
            });
            match value {
                Some(Field::Str(s)) if s.is_empty() => Err(Expected::Error(
                    400,
                    format!("item {i}: \"{name}\" must be a non-empty string"),
                )),
                Some(Field::Str(s)) if s.len() > max => Err(Expected::Error(
                    400,
                    format!("item {i}: \"{name}\" is {} bytes long", s.len()),
                )),
                Some(Field::Str(s)) => Ok(s.clone()),
                _ => Err(Expected::Error(
                    400,
                    format!("item {i}: \"{name}\" must be a non-empty string"),
                )),
            }
        };
        let id = match get("id", limits.max_id_bytes) {
            Ok(id) => id,
            Err(e) => return e,
        };
        let tenant = match get("tenant", limits.max_tenant_bytes) {
            Ok(tenant) => tenant,
            Err(e) => return e,
        };
        items.push(Item { id, tenant });
    }
    Expected::Items(items)
}

fn actual(body: &[u8], limits: Limits) -> Result<Vec<Item>, (u16, String)> {
    parse(body, limits).map_err(|e| {
        let text = e.to_string();
        (status(e), text)
    })
}

/// Small limits, so that empty, at-the-limit and over-the-limit values and arrays all come up.
fn small_limits() -> impl Strategy<Value = Limits> {
    let bytes = || prop_oneof![1..16usize, 32..64usize];
    let items = prop_oneof![1 => 0..5usize, 3 => 5..8usize];
    (bytes(), bytes(), items).prop_map(|(id, tenant, items)| Limits {
        max_id_bytes: id,
        max_tenant_bytes: tenant,
        max_items: items,
    })
}

/// Every element an object with two non-empty string fields (plus extras).
fn valid_elements() -> impl Strategy<Value = Vec<Element>> {
    vec(element(), 0..8).prop_map(|elements| {
        elements
            .into_iter()
            .filter_map(|e| match e {
                Element::Object(members) => Some(Element::Object(
                    members
                        .into_iter()
                        .map(|(k, m, style)| match m {
                            Member::Field(Field::Str(s)) if !s.is_empty() => {
                                (k, Member::Field(Field::Str(s)), style)
                            }
                            Member::Field(_) => (k, Member::Field(Field::Str("x".into())), style),
                            extra => (k, extra, style),
                        })
                        .collect(),
                )),
                Element::NotObject(_) => None,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_bytes_give_items_or_a_client_error(
        body in vec(any::<u8>(), 0..4096), limits in small_limits()
    ) {
        ok_or_client_error(&body, limits)?;
        ok_or_client_error(&body, DEFAULT_LIMITS)?;
    }

    /// Tokens of JSON in any order: far more often valid-looking than random bytes.
    #[test]
    fn token_soup_gives_items_or_a_client_error(
        tokens in vec(
            prop::sample::select(vec![
                "[", "]", "{", "}", ",", ":", "\"id\"", "\"tenant\"", "\"x\"", "\"\"", "1", "-0",
                "1e999", "null", "true", "\"", "\\", "\\u", "\\ud800", "\"\\ud800\"", " ", "\u{0}",
                "\u{feff}", "\"é\"",
            ]),
            0..200,
        ),
        limits in small_limits(),
    ) {
        let body = tokens.concat();
        ok_or_client_error(body.as_bytes(), limits)?;
        ok_or_client_error(body.as_bytes(), DEFAULT_LIMITS)?;
    }

    /// Generated bodies (unicode, escapes, whitespace, any field order, extra fields, wrong types,
    /// missing fields, empty and overlong values, too many items) parse to what the rules say.
    #[test]
    fn bodies_parse_to_what_the_rules_say(
        elements in vec(element(), 0..6), limits in small_limits(), ws in whitespace()
    ) {
        let body = render(&elements, ws);
        let got = actual(body.as_bytes(), limits);
        match expected(&elements, limits) {
            Expected::Items(items) => prop_assert_eq!(got, Ok(items), "body {}", body),
            Expected::Error(want, needle) => {
                let (status, text) = match got {
                    Err(e) => e,
                    Ok(items) => return Err(TestCaseError::fail(format!(
                        "body {body} parsed to {items:?}; expected {want} {needle:?}"
                    ))),
                };
                prop_assert_eq!(status, want, "body {}: {}", body, text);
                prop_assert!(text.contains(&needle), "body {}: {:?} lacks {:?}", body, text, needle);
            }
        }
    }

    /// Within the limits, a valid body gives exactly its items, in order, duplicates kept.
    #[test]
    fn valid_bodies_within_limits_give_exactly_their_items(
        elements in valid_elements(), ws in whitespace()
    ) {
        let body = render(&elements, ws);
        let Expected::Items(items) = expected(&elements, DEFAULT_LIMITS) else {
            return Err(TestCaseError::fail("generated an invalid body"));
        };
        prop_assert_eq!(parse(body.as_bytes(), DEFAULT_LIMITS).ok(), Some(items), "body {}", body);
    }

    /// A body cut anywhere before its closing bracket is not JSON: 400.
    #[test]
    fn truncated_bodies_are_bad_requests(
        elements in valid_elements(), ws in whitespace(), cut in any::<prop::sample::Index>()
    ) {
        let body = render(&elements, ws);
        let end = body.rfind(']').unwrap();
        let mut cuts = vec![cut.index(end + 1)];
        if body.len() <= 256 {
            cuts.extend(0..=end);
        }
        for len in cuts {
            let got = actual(&body.as_bytes()[..len], DEFAULT_LIMITS);
            prop_assert!(
                matches!(&got, Err((400, text)) if text.contains("not valid JSON")),
                "prefix {:?} of {}: {:?}", &body.as_bytes()[..len], body, got
            );
        }
    }

    /// Nesting of any depth and shape, closed or not, is refused (or, for `[]`, is no items) without
    /// overflowing the stack of a tokio worker thread, where the handler runs.
    #[test]
    fn nesting_of_any_depth_is_refused(
        opens in vec(prop::sample::select(vec!["[", "{\"a\":", "[{\"id\":\"1\",\"tenant\":\"t\",\"x\":"]), 1..300),
        depth in prop_oneof![Just(1usize), 1..200usize, 100..5000usize, Just(100_000usize)],
        closed in any::<bool>(),
    ) {
        let mut body = String::new();
        for i in 0..depth {
            body.push_str(opens[i % opens.len()]);
        }
        if closed {
            for i in (0..depth).rev() {
                body.push_str(match opens[i % opens.len()] {
                    "[" => "]",
                    "{\"a\":" => "}",
                    _ => "}]",
                });
            }
        }
        // serde_json refuses more than 128 levels; the third opener is two levels.
        let levels: usize = (0..depth)
            .map(|i| if opens[i % opens.len()].starts_with("[{") { 2 } else { 1 })
            .sum();
        let got = on_worker_stack(move || actual(body.as_bytes(), DEFAULT_LIMITS));
        match &got {
            Err((400, text)) if levels > 128 => {
                prop_assert!(text.contains("not valid JSON"), "{}", text)
            }
            Err((400, _)) => {}
            // A shallow body can be valid: `[]`, or items whose extra field nests.
            Ok(items) => prop_assert!(levels <= 128 && items.len() <= 1, "{:?}", items),
            Err(other) => prop_assert!(false, "{:?}", other),
        }
    }
}

/// Runs `f` on a thread with tokio's default worker stack (2 MiB), so a stack overflow would abort
/// the test rather than pass on a larger stack.
fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn a_hundred_thousand_open_brackets_are_a_bad_request() {
    for body in [
        "[".repeat(100_000),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        "{\"a\":".repeat(100_000),
        format!(
            "[{{\"id\":\"1\",\"tenant\":\"t\",\"x\":{}{}}}]",
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    ] {
        let got = on_worker_stack(move || actual(body.as_bytes(), DEFAULT_LIMITS));
        assert!(
            matches!(&got, Err((400, text)) if text.contains("not valid JSON")),
            "{got:?}"
        );
    }
}

/// The limits are in bytes, not characters, and inclusive.
#[test]
fn limits_count_bytes_inclusively() {
    let limits = Limits {
        max_id_bytes: 4,
        max_tenant_bytes: 4,
        max_items: 1,
    };
    // "😀" is four bytes; "éé" four; "ééé" six.
    assert_eq!(
        actual(
            r#"[{"id":"😀","tenant":"\u00e9\u00e9"}]"#.as_bytes(),
            limits
        ),
        Ok(vec![Item {
            id: "😀".into(),
            tenant: "éé".into()
        }])
    );
    let got = actual(r#"[{"id":"ééé","tenant":"t"}]"#.as_bytes(), limits);
    assert!(
        matches!(&got, Err((400, t)) if t.contains("6 bytes long")),
        "{got:?}"
    );
    let got = actual(
        br#"[{"id":"1","tenant":"t"},{"id":"2","tenant":"t"}]"#,
        limits,
    );
    assert!(matches!(&got, Err((413, _))), "{got:?}");
}
