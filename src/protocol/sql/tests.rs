use super::*;

fn fx(sql: &str) -> Effects {
    effects(sql.as_bytes())
}

#[test]
fn ordinary_queries_have_no_effects() {
    for sql in [
        "select 1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "UPDATE t SET x = 1 WHERE id = 2",
        "select 'set search_path to x; listen y'",
        "select $$ create temp table x() $$",
        "select $f$ reset all $f$, 1",
        "-- set x = 1\nselect 1",
        "/* discard all /* nested */ listen c */ select 1",
        "select \"set\" from t",
        "SELECT temp FROM weather",
        "insert into settings(name) values ('a')",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
        "PREPARE TRANSACTION 'x'",
        "SET LOCAL search_path TO a",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "INSERT INTO t (a, b) VALUES (1, now())",
        "SELECT count(*), coalesce(max(x), 0) FROM t WHERE id IN (1, 2)",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SELECT x::numeric(10, 2) FROM t",
        "SELECT pg_catalog.lower('A')",
    ] {
        assert!(fx(sql).is_empty(), "{sql}: {:?}", fx(sql));
    }
}

#[test]
fn finds_settings() {
    let e = fx("SET search_path TO a, \"B\"");
    assert!(e.settings && e.plain_set);
    assert_eq!(e.names, vec!["search_path"]);
    assert_eq!(e.resets, Resets::None);
    let e = fx("set session statement_timeout = '5s';");
    assert!(e.settings && e.plain_set);
    assert_eq!(e.names, vec!["statement_timeout"]);
    let e = fx("SET app.tenant_id = '7'; select 1");
    assert!(e.settings && !e.plain_set, "two statements");
    assert_eq!(e.names, vec!["app.tenant_id"]);
    let e = fx("SET TIME ZONE 'UTC'");
    assert!(e.plain_set);
    assert_eq!(e.names, vec!["timezone"]);
    let e = fx("SET ROLE limited");
    assert!(e.settings && !e.plain_set);
    let e = fx("SET SESSION AUTHORIZATION postgres");
    assert!(e.settings && !e.plain_set);
    assert_eq!(e.names, vec!["session_authorization"]);
    let e = fx("SET work_mem TO DEFAULT");
    assert!(e.settings && !e.plain_set);
    assert_eq!(e.resets, Resets::Names(vec!["work_mem".into()]));
    let e = fx("RESET search_path");
    assert_eq!(e.resets, Resets::Names(vec!["search_path".into()]));
    assert!(fx("reset all").resets == Resets::All);
    let e = fx("DISCARD ALL");
    assert!(e.discard_all && e.releases && e.resets == Resets::All);
    let e = fx("select pg_catalog.set_config('App.X', '1', false)");
    assert!(e.settings && !e.plain_set);
    assert_eq!(e.names, vec!["app.x"]);
    // A literal that is only part of the name (or cast) does not name the setting: the
    // statement is unseen code, whose settings no capture can list.
    for sql in [
        "select set_config('app.k' || i, 'v', false) from generate_series(1, 3) i",
        "select set_config('app.k'::text, 'v', false)",
        "select set_config(name, 'v', false) from t",
    ] {
        let e = fx(sql);
        assert!(e.settings && e.calls, "{sql}");
        assert!(e.names.is_empty(), "{sql}");
    }
    let e = fx("RESET SESSION AUTHORIZATION");
    assert_eq!(
        e.resets,
        Resets::Names(vec!["session_authorization".into()])
    );
    assert!(fx("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").settings);
}

#[test]
fn finds_session_objects() {
    assert_eq!(fx("CREATE TEMP TABLE x (a int)").pins, pin::TEMP);
    assert_eq!(fx("create temporary view v as select 1").pins, pin::TEMP);
    assert_eq!(
        fx("create or replace temp view v as select 1").pins,
        pin::TEMP
    );
    assert_eq!(fx("CREATE TABLE pg_temp.x (a int)").pins, pin::TEMP);
    assert_eq!(fx("CREATE TABLE \"pg_temp\".x AS SELECT 1").pins, pin::TEMP);
    assert_eq!(fx("SELECT 1 AS a INTO pg_temp.x").pins, pin::TEMP);
    assert_eq!(fx("SELECT \"pg_advisory_lock\"(1)").pins, pin::ADVISORY);
    assert!(fx("SELECT \"MyFunc\"(1)").calls);
    assert!(fx("create table t (a int)").releases);
    assert_eq!(fx("select 1 as a into temp t").pins, pin::TEMP);
    assert_eq!(fx("select pg_advisory_lock(1)").pins, pin::ADVISORY);
    assert_eq!(
        fx("select pg_try_advisory_lock_shared(1, 2)").pins,
        pin::ADVISORY
    );
    assert_eq!(fx("select pg_advisory_xact_lock(1)").pins, 0);
    assert_eq!(fx("LISTEN chan").pins, pin::LISTEN);
    assert_eq!(
        fx("declare c cursor with hold for select 1").pins,
        pin::CURSOR
    );
    assert_eq!(fx("declare c cursor for select 1").pins, 0);
    let e = fx("PREPARE p (int) AS SELECT $1");
    assert!(e.sql_prepare && e.pins == pin::PREPARE);
    for sql in [
        "UNLISTEN *",
        "close c",
        "DEALLOCATE p",
        "select pg_advisory_unlock_all()",
        "DISCARD TEMP",
        "drop table x",
    ] {
        assert!(fx(sql).releases, "{sql}");
    }
}

#[test]
fn finds_code_it_cannot_see_into() {
    assert!(fx("DO $$ BEGIN CREATE TEMP TABLE x(); END $$").calls);
    assert!(fx("call p()").calls);
    assert!(fx("select make_temp()").calls);
    assert!(fx("select public.make_temp(1)").calls);
    assert!(!fx("select count(*) from t").calls);
}

#[test]
fn lexes_quotes_and_comments() {
    assert!(fx("select E'\\' ; set x = 1'").is_empty());
    assert!(fx("select 'it''s; set x = 1'").is_empty());
    assert!(fx("select \"a\"\"; set\" from t").is_empty());
    assert!(fx("select $a$ $b$ set x=1 $b$ $a$").is_empty());
    assert!(fx("select $1; select 2").is_empty());
    assert!(fx("select 1 /* unterminated set x = 1").is_empty());
    assert!(fx("select 1; -- set x = 1").is_empty());
    assert!(fx("select 1; set x.y = 1").settings);
}
