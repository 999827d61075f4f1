//! A `[directory]` row -> the tenant it describes, checked as strictly as a `[tenants]`
//! block: a known backend, valid setting names, non-empty schema names, a cap of at least 1.

use crate::config::{is_setting_name, Config, TenantConfig};
use crate::server::LookupRows;

/// PostgreSQL's OIDs of the array types a `search_path` column may have: `text[]`,
/// `varchar[]`, `name[]`, `bpchar[]`.
const ARRAY_OIDS: [u32; 4] = [1009, 1015, 1003, 1014];

/// `Ok(None)`: no row (an unknown tenant). `Err`: why the row cannot be used.
pub fn tenant_from_row(
    name: &str,
    rows: &LookupRows,
    default_backend: &str,
    config: &Config,
) -> Result<Option<TenantConfig>, String> {
    let row = match rows.rows.as_slice() {
        [] => return Ok(None),
        [row] => row,
        _ => return Err(format!("{} rows (at most one expected)", rows.rows.len())),
    };
    let column = |wanted: &str| {
        rows.columns
            .iter()
            .position(|(n, _)| n == wanted)
            .map(|i| (row.get(i).cloned().flatten(), rows.columns[i].1))
    };
    let search_path = match column("search_path") {
        Some((Some(text), oid)) => schemas(&text, ARRAY_OIDS.contains(&oid))?,
        _ => vec!["public".to_string()],
    };
    let settings = match column("settings") {
        Some((Some(json), _)) => settings(&json)?,
        _ => Vec::new(),
    };
    let backend = match column("backend") {
        Some((Some(b), _)) if !b.is_empty() => b,
        _ => default_backend.to_string(),
    };
    if !config.backends.contains_key(&backend) {
        return Err(format!("backend: no backend named {backend:?}"));
    }
    let database = column("database")
        .and_then(|(d, _)| d)
        .filter(|d| !d.is_empty());
    let max_server_connections = match column("max_server_connections") {
        Some((Some(n), _)) => Some(
            n.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("max_server_connections: {n:?} is not a count >= 1"))?,
        ),
        _ => None,
    };
    Ok(Some(TenantConfig {
        name: name.to_string(),
        backend,
        search_path,
        settings,
        database,
        user: None,
        password: None,
        max_server_connections,
        max_client_connections: None,
    }))
}

/// `{a,"b c"}` (an array's text form) or `a, b` (comma-separated).
fn schemas(text: &str, array: bool) -> Result<Vec<String>, String> {
    let names = if array {
        array_elements(text)?
    } else {
        text.split(',').map(|s| s.trim().to_string()).collect()
    };
    // A text column holding just "" is an empty search path, as `search_path = []`.
    let empty_text = !array && names.len() == 1;
    if !empty_text && names.iter().any(String::is_empty) {
        return Err(format!("search_path: empty schema name in {text:?}"));
    }
    Ok(names.into_iter().filter(|n| !n.is_empty()).collect())
}

/// The elements of a one-dimensional array in PostgreSQL's text form.
fn array_elements(text: &str) -> Result<Vec<String>, String> {
    let bad = || format!("search_path: {text:?} is not a one-dimensional array");
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(bad)?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut element = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next().ok_or_else(bad)? {
                    '\\' => element.push(chars.next().ok_or_else(bad)?),
                    '"' => break,
                    c => element.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '"' {
                    return Err(bad());
                }
                element.push(c);
                chars.next();
            }
            if element.eq_ignore_ascii_case("NULL") {
                return Err("search_path: NULL element".into());
            }
        }
        out.push(element);
        match chars.next() {
            None => return Ok(out),
            Some(',') => {}
            Some(_) => return Err(bad()),
        }
    }
}

/// A json object of setting name -> string, number or boolean.
fn settings(json: &str) -> Result<Vec<(String, String)>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("settings: not json ({e})"))?;
    let serde_json::Value::Object(map) = value else {
        return Err("settings: not a json object".into());
    };
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        if !is_setting_name(&name) || name.eq_ignore_ascii_case("search_path") {
            return Err(format!(
                "settings: {name:?} is not a setting name allowed here"
            ));
        }
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            other => {
                return Err(format!(
                    "settings.{name}: {other} is not a string, number or boolean"
                ))
            }
        };
        out.push((name, text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = "[backends.main]\nhost='h'\ndatabase='d'\nuser='u'\npassword='p'\n\
                    [backends.other]\nhost='h2'\ndatabase='d'\nuser='u'\npassword='p'\n";
        Config::from_toml_str(text, "t").unwrap()
    }

    fn rows(columns: &[(&str, u32)], values: &[Option<&str>]) -> LookupRows {
        LookupRows {
            columns: columns.iter().map(|(n, o)| (n.to_string(), *o)).collect(),
            rows: vec![values.iter().map(|v| v.map(str::to_string)).collect()],
            error: None,
        }
    }

    #[test]
    fn arrays_and_comma_lists_of_schemas() {
        assert_eq!(
            array_elements(r#"{a,"b c","we\"ird",ä}"#).unwrap(),
            ["a", "b c", "we\"ird", "ä"]
        );
        assert_eq!(array_elements("{}").unwrap(), Vec::<String>::new());
        assert!(array_elements("{a,NULL}").is_err());
        assert!(array_elements("{{a}}").is_err());
        assert!(array_elements("a,b").is_err());
        assert_eq!(schemas("t1, public", false).unwrap(), ["t1", "public"]);
        assert!(schemas("t1,,public", false).is_err());
    }

    #[test]
    fn a_row_becomes_a_tenant() {
        let r = rows(
            &[
                ("search_path", 1009),
                ("settings", 3802),
                ("backend", 25),
                ("database", 25),
                ("max_server_connections", 23),
            ],
            &[
                Some("{t1,public}"),
                Some(r#"{"app.tenant_id": 17, "app.name": "x'y"}"#),
                Some("other"),
                None,
                Some("3"),
            ],
        );
        let t = tenant_from_row("t1", &r, "main", &config())
            .unwrap()
            .unwrap();
        assert_eq!(t.search_path, ["t1", "public"]);
        // In name order (a json object has none of its own).
        assert_eq!(
            t.settings,
            [
                ("app.name".to_string(), "x'y".to_string()),
                ("app.tenant_id".to_string(), "17".to_string())
            ]
        );
        assert_eq!(t.backend, "other");
        assert_eq!(t.database, None);
        assert_eq!(t.max_server_connections, Some(3));
    }

    #[test]
    fn bad_rows_are_refused() {
        let cfg = config();
        let one = |col: &str, oid: u32, v: &str| {
            tenant_from_row("t", &rows(&[(col, oid)], &[Some(v)]), "main", &cfg)
        };
        assert!(one("backend", 25, "nope").is_err());
        assert!(one("settings", 3802, r#"{"bad name; drop": "1"}"#).is_err());
        assert!(one("settings", 3802, r#"{"search_path": "x"}"#).is_err());
        assert!(one("settings", 3802, "[1]").is_err());
        assert!(one("max_server_connections", 23, "0").is_err());
        let mut two = rows(&[("backend", 25)], &[Some("main")]);
        two.rows.push(two.rows[0].clone());
        assert!(tenant_from_row("t", &two, "main", &cfg).is_err());
        let none = LookupRows::default();
        assert_eq!(tenant_from_row("t", &none, "main", &cfg).unwrap(), None);
        let t = one("search_path", 25, "a, b").unwrap().unwrap();
        assert_eq!((t.backend.as_str(), t.search_path.len()), ("main", 2));
    }
}
