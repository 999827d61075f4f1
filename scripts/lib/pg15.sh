# Sourced by scripts/test and scripts/demo: makes sure PostgreSQL server binaries (Debian's
# postgresql-15) and the `postgres` OS user exist; sets PG15_BIN. Needs log/die/is_root.
# --- PostgreSQL 15: Debian's packages --------------------------------------------------
# A bin dir under /usr/lib/postgresql with a server in it; 15 if present, else the highest.
debian_pg_bin() {
    if [ -x /usr/lib/postgresql/15/bin/initdb ] && [ -x /usr/lib/postgresql/15/bin/pg_ctl ]; then
        echo /usr/lib/postgresql/15/bin
        return
    fi
    local dir found=""
    while IFS= read -r dir; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then found=$dir; fi
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
    echo "$found"
}

PG15_BIN=$(debian_pg_bin)
if [ -z "$PG15_BIN" ]; then
    is_root || die "PostgreSQL server binaries are missing; run as root to install postgresql-15"
    log "installing PostgreSQL 15 (postgresql-15, postgresql-client-15)"
    apt-get update -q
    apt-get install -y -q postgresql-15 postgresql-client-15
    PG15_BIN=$(debian_pg_bin)
    [ -n "$PG15_BIN" ] || die "postgresql-15 installed, but no initdb/pg_ctl under /usr/lib/postgresql"
fi

# PostgreSQL refuses to run as root; src/localpg.rs runs it as the `postgres` OS user then.
if is_root && ! id postgres >/dev/null 2>&1; then
    log "creating the postgres OS user"
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres
fi

