//! `[tenant_template]` and `[directory]` -> their typed configs (a child of `validate`, to
//! share its helpers).

use std::collections::BTreeMap;

use super::super::dynamic::{DirectoryConfig, TemplateConfig, TENANT_PLACEHOLDER};
use super::super::raw::{RawDirectory, RawTemplate};
use super::{at_least_one, listing, non_empty, nonzero_duration, settings, Problem};

pub(super) fn template<B>(
    raw: RawTemplate,
    backends: &BTreeMap<String, B>,
) -> Result<TemplateConfig, Problem> {
    let path = "tenant_template";
    backend_named(path, &raw.backend, backends)?;
    for (i, schema) in raw.search_path.iter().enumerate() {
        if schema.is_empty() {
            return Err(format!(
                "{path}.search_path[{i}]: schema names must not be empty"
            ));
        }
    }
    let settings = settings(path, raw.settings.0)?;
    let name_regex = regex::Regex::new(&raw.tenant_name_pattern).map_err(|e| {
        let first = e.to_string().lines().last().unwrap_or_default().to_string();
        format!("{path}.tenant_name_pattern: not a regular expression ({first})")
    })?;
    if !raw.tenant_name_pattern.starts_with('^') || !raw.tenant_name_pattern.ends_with('$') {
        return Err(format!(
            "{path}.tenant_name_pattern: must be anchored (start with ^ and end with $), \
             like \"^[a-z0-9_]{{1,63}}$\""
        ));
    }
    let cap = |key: &str, value: Option<usize>| {
        value
            .map(|v| at_least_one(&format!("{path}.{key}"), v))
            .transpose()
    };
    let database = Some(raw.database).filter(|d| !d.is_empty());
    Ok(TemplateConfig {
        backend: raw.backend,
        search_path: raw.search_path,
        settings,
        database,
        max_server_connections: cap("max_server_connections", raw.max_server_connections)?,
        max_client_connections: cap("max_client_connections", raw.max_client_connections)?,
        tenant_name_pattern: raw.tenant_name_pattern,
        name_regex,
    })
}

pub(super) fn directory<B>(
    raw: RawDirectory,
    backends: &BTreeMap<String, B>,
) -> Result<DirectoryConfig, Problem> {
    let path = "directory";
    backend_named(path, &raw.backend, backends)?;
    non_empty(path, "query", &raw.query)?;
    if !raw.query.contains("$1") || raw.query.contains("$2") {
        return Err(format!(
            "{path}.query: must use exactly one parameter, $1 (the tenant's name), like \
             \"SELECT search_path, settings, backend FROM tenants WHERE name = $1\""
        ));
    }
    if raw.query.contains(TENANT_PLACEHOLDER) {
        return Err(format!(
            "{path}.query: {TENANT_PLACEHOLDER} is not replaced here: the name goes as $1"
        ));
    }
    Ok(DirectoryConfig {
        backend: raw.backend,
        query: raw.query,
        ttl: nonzero_duration(&format!("{path}.ttl"), &raw.ttl)?,
        negative_ttl: nonzero_duration(&format!("{path}.negative_ttl"), &raw.negative_ttl)?,
    })
}

fn backend_named<B>(path: &str, name: &str, backends: &BTreeMap<String, B>) -> Result<(), Problem> {
    if backends.contains_key(name) {
        return Ok(());
    }
    Err(format!(
        "{path}.backend: no backend named {name:?} ({})",
        listing("backends", backends)
    ))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[backends.main]\nhost='h'\ndatabase='d'\nuser='u'\npassword='p'\n\
                        [users.app]\npassword='x'\ntenants=['acme']\n";

    fn load(extra: &str) -> Result<Config, String> {
        Config::from_toml_str(&format!("{BASE}{extra}"), "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn a_template_fills_in_the_name() {
        let c = load(
            "[tenant_template]\nbackend='main'\nsearch_path=['{tenant}','public']\n\
             settings={ 'app.tenant_id' = '{tenant}' }\ndatabase='app_{tenant}'\n",
        )
        .unwrap();
        let t = c.tenant_template.as_ref().unwrap();
        assert!(t.serves("acme_1") && !t.serves("Acme") && !t.serves("a'b"));
        assert!(
            !t.serves(&"a".repeat(64)),
            "the default pattern allows 63 characters"
        );
        let acme = t.tenant("acme");
        assert_eq!(acme.search_path, ["acme", "public"]);
        assert_eq!(acme.settings, [("app.tenant_id".into(), "acme".into())]);
        assert_eq!(acme.database.as_deref(), Some("app_acme"));
        assert!(
            c.users["app"].tenants.allows("acme"),
            "a list may name template tenants"
        );
    }

    #[test]
    fn bad_templates_and_directories_are_named() {
        let cases = [
            (
                "[tenant_template]\nbackend='nope'\n",
                "tenant_template.backend: no backend named \"nope\"",
            ),
            (
                "[tenant_template]\nbackend='main'\ntenant_name_pattern='[a-z'\n",
                "tenant_template.tenant_name_pattern: not a regular expression",
            ),
            (
                "[tenant_template]\nbackend='main'\ntenant_name_pattern='[a-z]+'\n",
                "must be anchored",
            ),
            (
                "[tenant_template]\nbackend='main'\nsettings={ 'bad name' = '1' }\n",
                "tenant_template.settings.\"bad name\": not a setting name",
            ),
            (
                "[directory]\nbackend='main'\nquery='SELECT 1'\n",
                "directory.query: must use exactly one parameter",
            ),
            (
                "[directory]\nbackend='main'\nquery='SELECT $1, $2'\n",
                "directory.query: must use exactly one parameter",
            ),
            (
                "[directory]\nbackend='main'\nquery='SELECT $1'\nttl='0s'\n",
                "directory.ttl: must be longer than 0s",
            ),
            (
                "[directory]\nbackend='main'\nquery='SELECT $1'\nbogus=1\n",
                "unknown field `bogus`",
            ),
        ];
        for (extra, want) in cases {
            let err = load(extra).unwrap_err();
            assert!(err.contains(want), "{extra}: {err}");
        }
        let err = Config::from_toml_str(BASE, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no tenant named \"acme\""),
            "without either: {err}"
        );
    }
}
