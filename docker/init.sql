-- Run once by the postgres image's entrypoint, as user app in database app.
-- Two schema-per-tenant tenants; pgtenant sets search_path to the tenant's schema.
CREATE SCHEMA acme;
CREATE TABLE acme.customers (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO acme.customers (name) VALUES ('Acme Anvils'), ('Acme Rockets'), ('Acme Giant Magnets');

CREATE SCHEMA globex;
CREATE TABLE globex.customers (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO globex.customers (name) VALUES ('Globex Hammocks'), ('Globex Volcano Lair');
