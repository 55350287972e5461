//! Checks answers against the API's OpenAPI document: [`OpenApi::check`] validates a body
//! against the schema documented for a path and status, with the JSON Schema keywords the
//! document uses (`$ref`, `type`, `properties`, `required`, `additionalProperties`, `items`,
//! `maxItems`, `maxProperties`, `propertyNames`, `oneOf`, `enum`, `minimum`, `maximum`,
//! `minLength`, `pattern`). A keyword it does not know fails the check, so the document
//! cannot grow a rule this checker silently ignores.

use regex_automata::meta::Regex;
use serde_json::Value;

/// Keywords that only describe.
const ANNOTATIONS: [&str; 2] = ["description", "format"];

/// The OpenAPI document.
pub struct OpenApi {
    doc: Value,
}

impl OpenApi {
    /// Parses the document.
    pub fn new(text: &str) -> OpenApi {
        OpenApi { doc: serde_json::from_str(text).expect("the OpenAPI document is JSON") }
    }

    /// The document.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// Panics unless `body` conforms to the schema of `POST path`'s `status` answer.
    pub fn check(&self, path: &str, status: u16, body: &Value) {
        let operation = &self.doc["paths"][path]["post"];
        assert!(operation.is_object(), "{path} is not in the document");
        let response = &operation["responses"][status.to_string()];
        assert!(response.is_object(), "{path}: status {status} is not documented");
        let schema = &response["content"]["application/json"]["schema"];
        if let Err(why) = self.validate(schema, body, "$") {
            panic!("{path} {status}: {why}\nbody: {body}");
        }
    }

    /// Panics unless `body` conforms to the request schema of `POST path` (the test's own
    /// requests are checked too, so a test cannot drift from the document).
    pub fn check_request(&self, path: &str, body: &Value) {
        let schema = &self.doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"];
        if let Err(why) = self.validate(schema, body, "$") {
            panic!("request to {path}: {why}\nbody: {body}");
        }
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference.strip_prefix("#/components/schemas/").expect("local $ref");
                &self.doc["components"]["schemas"][name]
            }
            None => schema,
        }
    }

    /// Whether `value` conforms to `schema`; the first violation, with where it is.
    pub fn validate(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        let rules = schema.as_object().ok_or_else(|| format!("{at}: schema is not an object"))?;
        for (keyword, rule) in rules {
            let ok = match keyword.as_str() {
                k if ANNOTATIONS.contains(&k) => true,
                "type" => types(rule).iter().any(|t| has_type(value, t)),
                "enum" => rule.as_array().unwrap().contains(value),
                "minimum" => value.as_f64().is_none_or(|v| v >= rule.as_f64().unwrap()),
                "maximum" => value.as_f64().is_none_or(|v| v <= rule.as_f64().unwrap()),
                "minLength" => value.as_str().is_none_or(|s| s.chars().count() as u64 >= rule.as_u64().unwrap()),
                "pattern" => value.as_str().is_none_or(|s| Regex::new(rule.as_str().unwrap()).unwrap().is_match(s)),
                "maxItems" => value.as_array().is_none_or(|a| a.len() as u64 <= rule.as_u64().unwrap()),
                "maxProperties" => value.as_object().is_none_or(|o| o.len() as u64 <= rule.as_u64().unwrap()),
                "required" => {
                    let fields = rule.as_array().unwrap().iter().filter_map(Value::as_str);
                    let missing = value.as_object().and_then(|o| fields.into_iter().find(|f| !o.contains_key(*f)));
                    if let Some(field) = missing {
                        return Err(format!("{at}: missing {field}"));
                    }
                    true
                }
                "properties" | "additionalProperties" | "propertyNames" => {
                    self.validate_object(rules, value, at)?;
                    true
                }
                "items" => match value.as_array() {
                    Some(items) => {
                        for (i, item) in items.iter().enumerate() {
                            self.validate(rule, item, &format!("{at}[{i}]"))?;
                        }
                        true
                    }
                    None => true,
                },
                "oneOf" => {
                    let matching =
                        rule.as_array().unwrap().iter().filter(|s| self.validate(s, value, at).is_ok()).count();
                    matching == 1
                }
                other => return Err(format!("{at}: the checker does not know the keyword {other:?}")),
            };
            if !ok {
                return Err(format!("{at}: {value} fails {keyword}: {rule}"));
            }
        }
        Ok(())
    }

    /// `properties`, `additionalProperties` and `propertyNames` together.
    fn validate_object(&self, rules: &serde_json::Map<String, Value>, value: &Value, at: &str) -> Result<(), String> {
        let Some(object) = value.as_object() else { return Ok(()) };
        let properties = rules.get("properties").and_then(Value::as_object);
        for (name, field) in object {
            let at = format!("{at}.{name}");
            if let Some(names) = rules.get("propertyNames") {
                self.validate(names, &Value::String(name.clone()), &at)?;
            }
            match (properties.and_then(|p| p.get(name)), rules.get("additionalProperties")) {
                (Some(schema), _) => self.validate(schema, field, &at)?,
                (None, Some(Value::Bool(false))) => return Err(format!("{at}: not a documented property")),
                (None, Some(schema)) if schema.is_object() => self.validate(schema, field, &at)?,
                (None, _) => {}
            }
        }
        Ok(())
    }
}

fn types(rule: &Value) -> Vec<&str> {
    match rule {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => panic!("type must be a string or an array: {rule}"),
    }
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        other => panic!("unknown type {other}"),
    }
}
