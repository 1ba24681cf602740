//! Validation of a `POST /items` body. Parsed from bytes whatever the Content-Type (curl's `-d` sends a
//! form type), so every bad input gets our JSON error, not a framework's text.

use storage::Item;

use crate::error::ApiError;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_id_bytes: usize,
    pub max_tenant_bytes: usize,
    pub max_items: usize,
}

const SHAPE: &str = r#"expected a JSON array of {"id": "...", "tenant": "..."} objects"#;

pub fn parse(body: &[u8], limits: Limits) -> Result<Vec<Item>, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON ({e}); {SHAPE}")))?;
    let array = value
        .as_array()
        .ok_or_else(|| ApiError::BadRequest(format!("body is not an array; {SHAPE}")))?;
    if array.len() > limits.max_items {
        return Err(ApiError::TooLarge(format!(
            "{} items in one POST, at most {} allowed; split the batch",
            array.len(),
            limits.max_items
        )));
    }
    array
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let obj = v.as_object().ok_or_else(|| {
                ApiError::BadRequest(format!("item {i} is not an object; {SHAPE}"))
            })?;
            let id = field(obj, i, "id", limits.max_id_bytes)?;
            let tenant = field(obj, i, "tenant", limits.max_tenant_bytes)?;
            Ok(Item { id, tenant })
        })
        .collect()
}

fn field(
    obj: &serde_json::Map<String, serde_json::Value>,
    i: usize,
    name: &str,
    max: usize,
) -> Result<String, ApiError> {
    let text = obj
        .get(name)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(format!("item {i}: \"{name}\" must be a non-empty string"))
        })?;
    if text.len() > max {
        return Err(ApiError::BadRequest(format!(
            "item {i}: \"{name}\" is {} bytes long, at most {max} allowed",
            text.len()
        )));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_id_bytes: 8,
        max_tenant_bytes: 8,
        max_items: 3,
    };

    fn err(body: &str) -> String {
        match parse(body.as_bytes(), LIMITS) {
            Err(ApiError::BadRequest(msg)) => msg,
            other => panic!("expected a bad request for {body}, got {other:?}"),
        }
    }

    #[test]
    fn accepts_items_and_ignores_extra_fields() {
        let items = parse(
            br#"[{"id":"1","tenant":"t","extra":3},{"id":"2","tenant":"\u00fc"}]"#,
            LIMITS,
        )
        .unwrap();
        assert_eq!(
            items,
            vec![
                Item {
                    id: "1".into(),
                    tenant: "t".into()
                },
                Item {
                    id: "2".into(),
                    tenant: "ü".into()
                }
            ]
        );
        assert!(parse(b"[]", LIMITS).unwrap().is_empty());
    }

    #[test]
    fn rejects_too_many_items_as_too_large() {
        let body = br#"[{"id":"1","tenant":"t"},{"id":"2","tenant":"t"},{"id":"3","tenant":"t"},{"id":"4","tenant":"t"}]"#;
        match parse(body, LIMITS) {
            Err(ApiError::TooLarge(msg)) => assert!(
                msg.contains("4 items") && msg.contains("at most 3"),
                "{msg}"
            ),
            other => panic!("expected too large, got {other:?}"),
        }
        let three = br#"[{"id":"1","tenant":"t"},{"id":"2","tenant":"t"},{"id":"3","tenant":"t"}]"#;
        assert_eq!(parse(three, LIMITS).unwrap().len(), 3);
    }

    #[test]
    fn rejects_each_kind_of_bad_input_with_a_reason() {
        assert!(err("{").contains("not valid JSON"));
        assert!(err(r#"{"id":"1","tenant":"t"}"#).contains("not an array"));
        assert!(err("[1]").contains("item 0 is not an object"));
        assert!(err(r#"[{"id":"1","tenant":"t"},{"tenant":"t"}]"#).contains(r#"item 1: "id""#));
        assert!(err(r#"[{"id":"","tenant":"t"}]"#).contains("non-empty"));
        assert!(err(r#"[{"id":5,"tenant":"t"}]"#).contains(r#""id" must be"#));
        assert!(err(r#"[{"id":"1","tenant":null}]"#).contains(r#""tenant" must be"#));
        assert!(err(r#"[{"id":"123456789","tenant":"t"}]"#).contains("at most 8"));
        assert!(
            err(&format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)))
                .contains("not valid JSON")
        );
    }
}
