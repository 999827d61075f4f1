-- Fixture for the integration tests, run once per test binary as superuser `postgres`
-- in database `postgres` (psql script: \connect switches databases).

CREATE ROLE app LOGIN PASSWORD 'app_pw';
CREATE ROLE tenant_t7 LOGIN PASSWORD 't7_pw';
-- Virtual sessions (tests/it/vsession.rs): a role the server login `app` may SET ROLE to.
CREATE ROLE vs_role NOLOGIN;
GRANT vs_role TO app;
CREATE DATABASE app OWNER app;
CREATE DATABASE app_t5 OWNER app;
CREATE DATABASE app_t6 OWNER app;

\connect app
-- Model 2: a schema per tenant, all owned by app.
SET ROLE app;
CREATE SCHEMA t1;
CREATE TABLE t1.whoami (tenant text, n int);
INSERT INTO t1.whoami VALUES ('t1', 1);
CREATE SCHEMA t2;
CREATE TABLE t2.whoami (tenant text, n int);
INSERT INTO t2.whoami VALUES ('t2', 2);
CREATE SCHEMA t3;
CREATE TABLE t3.whoami (tenant text, n int);
INSERT INTO t3.whoami VALUES ('t3', 3);
CREATE SCHEMA t4;
CREATE TABLE t4.whoami (tenant text, n int);
INSERT INTO t4.whoami VALUES ('t4', 4);

-- Model 1: one table, rows carry a tenant id, row-level security on app.tenant_id.
-- Tenant N owns N rows, so count(*) and min(tenant_id) both say N.
CREATE TABLE public.rls_items (tenant_id int NOT NULL, val text NOT NULL);
INSERT INTO public.rls_items
    SELECT t, 'item ' || t || '.' || i FROM generate_series(1, 4) t, generate_series(1, t) i;
ALTER TABLE public.rls_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.rls_items FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON public.rls_items
    USING (tenant_id = current_setting('app.tenant_id')::int);
RESET ROLE;

-- A tenant with its own server login: schema t7 owned by tenant_t7. Schemas t7a and t7b
-- are for tenants that log in as tenant_t7 too (tests/it/collision.rs: they share its pool).
CREATE SCHEMA t7 AUTHORIZATION tenant_t7;
CREATE SCHEMA t7a AUTHORIZATION tenant_t7;
CREATE SCHEMA t7b AUTHORIZATION tenant_t7;
SET ROLE tenant_t7;
CREATE TABLE t7.whoami (tenant text, n int);
INSERT INTO t7.whoami VALUES ('t7', 7);
CREATE TABLE t7a.whoami (tenant text, n int);
INSERT INTO t7a.whoami VALUES ('t7a', 7);
CREATE TABLE t7b.whoami (tenant text, n int);
INSERT INTO t7b.whoami VALUES ('t7b', 7);
RESET ROLE;

-- Model 3: a database per tenant. Schemas t5a and t5b in app_t5 are for tenants that name
-- the same database (tests/it/collision.rs: they share its pool).
\connect app_t5
SET ROLE app;
CREATE TABLE public.whoami (tenant text, n int);
INSERT INTO public.whoami VALUES ('t5', 5);
CREATE SCHEMA t5a;
CREATE TABLE t5a.whoami (tenant text, n int);
INSERT INTO t5a.whoami VALUES ('t5a', 5);
CREATE SCHEMA t5b;
CREATE TABLE t5b.whoami (tenant text, n int);
INSERT INTO t5b.whoami VALUES ('t5b', 5);
RESET ROLE;

\connect app_t6
SET ROLE app;
CREATE TABLE public.whoami (tenant text, n int);
INSERT INTO public.whoami VALUES ('t6', 6);
RESET ROLE;

-- Protocol and fault tests (tests/it/protocol.rs, faults.rs): each test has its own tables.
\connect app
SET ROLE app;
-- COPY: 10k rows with tabs, backslashes, non-ASCII and NULLs; copied out and back in.
CREATE TABLE public.copy_src (id int PRIMARY KEY, val text);
INSERT INTO public.copy_src
    SELECT i, CASE WHEN i % 97 = 0 THEN NULL
                   ELSE 'row ' || i || E'\ttab\\back ' || chr(233) || ' ' || chr(9731) || ' '
                        || repeat('x', i % 37) END
    FROM generate_series(1, 10000) i;
CREATE TABLE public.copy_dst_tp (id int, val text);
CREATE TABLE public.copy_dst_psql (id int, val text);
CREATE TABLE public.copy_abort_tp (id int, val text);
CREATE TABLE public.copy_abort_psql (id int, val text);
CREATE TABLE public.copy_release (id int, val text);
-- A 20 MB value each way.
CREATE TABLE public.big_values (id int PRIMARY KEY, val text);
-- LATIN1 client bytes.
CREATE TABLE public.latin1_items (id int PRIMARY KEY, val text);
-- Row locks left by clients that die inside a transaction.
CREATE TABLE public.lock_terminate (id int PRIMARY KEY, v text);
INSERT INTO public.lock_terminate VALUES (1, 'a'), (2, 'b');
CREATE TABLE public.lock_eof (id int PRIMARY KEY, v text);
INSERT INTO public.lock_eof VALUES (1, 'a'), (2, 'b');
CREATE TABLE public.lock_psql (id int PRIMARY KEY, v text);
INSERT INTO public.lock_psql VALUES (1, 'a'), (2, 'b');
RESET ROLE;
