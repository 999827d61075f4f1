//! An idle client moved to another pgtenant process (`--takeover`, see `crate::takeover`):
//! its session as bytes ([`encode`]), and the new process adopting it ([`adopt`]): the
//! same cancel key, user, tenant, reported parameters, startup settings, captured settings
//! and named prepared statements; it waits parked until it sends something, as it would
//! have in the old process.
//!
//! Only a session with nothing that lives on a server connection moves: no pins (temp
//! tables, advisory locks, WITH HOLD cursors, SQL PREPARE), no LISTEN, no TLS, no server
//! connection held (session mode). Those stay with the old process until they leave.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};

use super::client::ClientCtx;
use super::park::{ParkLot, Parked};
use super::vsession::VSession;
use crate::config::PassThrough;
use crate::server::Params;
use crate::shared::{ClientEntry, Shared};

/// The version of the format below; both processes must speak the same.
pub const VERSION: u32 = 1;
/// A session whose state is larger (thousands of prepared statements) stays with the old
/// process: one record must fit a Unix socket's send buffer.
pub const MAX_STATE: usize = 128 * 1024;

/// A client on its way to the new process: its socket and its session.
pub struct Moving {
    pub state: Vec<u8>,
    pub socket: OwnedFd,
}

/// The session of a parked client as bytes; `None` when it cannot move (see the module
/// docs).
pub fn encode(ctx: &ClientCtx, entry: &ClientEntry) -> Option<Vec<u8>> {
    if ctx.vs.pins() != 0 || ctx.listening.is_some() {
        return None;
    }
    let mut b = Vec::with_capacity(512);
    b.put_u32(VERSION);
    b.put_i32(ctx.key.0);
    b.put_i32(ctx.key.1);
    put_str(&mut b, &ctx.user);
    put_str(&mut b, &ctx.tenant.name);
    put_str(&mut b, &entry.application_name);
    put_params(&mut b, &ctx.params);
    put_params(&mut b, &ctx.login_params);
    put_pairs(&mut b, ctx.startup_settings().iter());
    let (snapshot, own_names) = ctx.vs.export();
    put_pairs(&mut b, snapshot.iter());
    b.put_u32(own_names.len() as u32);
    for name in &own_names {
        put_str(&mut b, name);
    }
    b.put_u32(ctx.stmts.len() as u32);
    for (name, stmt) in ctx.stmts.iter() {
        let (_, sql, types) = crate::protocol::frontend::split_parse(&stmt.parse)?;
        put_bytes(&mut b, name);
        put_bytes(&mut b, sql);
        put_bytes(&mut b, types);
    }
    // An `[auth]` user's server login (its keys live only in this process's memory).
    match &ctx.tenant.endpoint.config.pass_through {
        None => b.put_u8(0),
        Some(PassThrough::Scram {
            client_key,
            server_key,
        }) => {
            b.put_u8(1);
            put_bytes(&mut b, client_key);
            put_bytes(&mut b, server_key);
        }
        Some(PassThrough::Md5(hash)) => {
            b.put_u8(2);
            put_str(&mut b, hash);
        }
    }
    (b.len() <= MAX_STATE).then_some(b)
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.put_u32(v.len() as u32);
    b.put_slice(v);
}

fn put_str(b: &mut Vec<u8>, v: &str) {
    put_bytes(b, v.as_bytes());
}

fn put_params(b: &mut Vec<u8>, params: &Params) {
    let all: Vec<(&str, &[u8])> = params.iter().collect();
    b.put_u32(all.len() as u32);
    for (name, value) in all {
        put_str(b, name);
        put_bytes(b, value);
    }
}

fn put_pairs<'a>(b: &mut Vec<u8>, pairs: impl ExactSizeIterator<Item = &'a (String, String)>) {
    b.put_u32(pairs.len() as u32);
    for (name, value) in pairs {
        put_str(b, name);
        put_str(b, value);
    }
}

/// A session as [`encode`] wrote it.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    pub key: (i32, i32),
    pub user: String,
    pub tenant: String,
    pub application_name: String,
    pub params: Vec<(String, Vec<u8>)>,
    pub login_params: Vec<(String, Vec<u8>)>,
    pub startup_settings: Vec<(String, String)>,
    pub snapshot: Vec<(String, String)>,
    pub own_names: Vec<String>,
    /// (client name, query text, parameter-type bytes).
    pub statements: Vec<(Bytes, Bytes, Bytes)>,
    /// How an `[auth]` user's own endpoint logs in (`None`: a configured user).
    pub pass_through: Option<PassThrough>,
}

/// Why a record could not be read (a different version, or damage).
#[derive(Debug, PartialEq, Eq)]
pub struct BadState(&'static str);

impl std::fmt::Display for BadState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, BadState> {
        self.0
            .try_get_u32()
            .map_err(|_| BadState("truncated session state"))
    }

    fn bytes(&mut self) -> Result<Bytes, BadState> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return Err(BadState("truncated session state"));
        }
        let v = Bytes::copy_from_slice(&self.0[..n]);
        self.0.advance(n);
        Ok(v)
    }

    fn string(&mut self) -> Result<String, BadState> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| BadState("a name is not UTF-8"))
    }

    /// A count of items each at least 4 bytes long (so a damaged count cannot reserve much).
    fn count(&mut self) -> Result<usize, BadState> {
        let n = self.u32()? as usize;
        if n > self.0.len() / 4 {
            return Err(BadState("a count larger than the state"));
        }
        Ok(n)
    }

    fn pairs(&mut self) -> Result<Vec<(String, String)>, BadState> {
        (0..self.count()?)
            .map(|_| Ok((self.string()?, self.string()?)))
            .collect()
    }

    fn pass_through(&mut self) -> Result<Option<PassThrough>, BadState> {
        Ok(match self.0.try_get_u8() {
            Ok(0) => None,
            Ok(1) => Some(PassThrough::Scram {
                client_key: self.bytes()?.to_vec(),
                server_key: self.bytes()?.to_vec(),
            }),
            Ok(2) => Some(PassThrough::Md5(self.string()?)),
            _ => return Err(BadState("an unknown server login")),
        })
    }

    fn params(&mut self) -> Result<Vec<(String, Vec<u8>)>, BadState> {
        (0..self.count()?)
            .map(|_| Ok((self.string()?, self.bytes()?.to_vec())))
            .collect()
    }
}

pub fn decode(state: &[u8]) -> Result<Decoded, BadState> {
    let mut r = Reader(state);
    if r.u32()? != VERSION {
        return Err(BadState("another version of the session state"));
    }
    let key = (r.u32()? as i32, r.u32()? as i32);
    let decoded = Decoded {
        key,
        user: r.string()?,
        tenant: r.string()?,
        application_name: r.string()?,
        params: r.params()?,
        login_params: r.params()?,
        startup_settings: r.pairs()?,
        snapshot: r.pairs()?,
        own_names: (0..r.count()?)
            .map(|_| r.string())
            .collect::<Result<_, _>>()?,
        statements: (0..r.count()?)
            .map(|_| Ok((r.bytes()?, r.bytes()?, r.bytes()?)))
            .collect::<Result<_, _>>()?,
        pass_through: r.pass_through()?,
    };
    if !r.0.is_empty() {
        return Err(BadState("bytes after the session state"));
    }
    Ok(decoded)
}

fn params_of(list: &[(String, Vec<u8>)]) -> Params {
    let mut params = Params::default();
    for (name, value) in list {
        params.set(name, value);
    }
    params
}

/// The new process takes a client over: registers it (same cancel key) and parks it. A
/// client whose tenant this process does not serve, or whose state cannot be read, is
/// closed (and logged).
pub async fn adopt(moving: Moving, shared: &Arc<Shared>, lot: &Arc<ParkLot>) {
    let socket = std::net::TcpStream::from(moving.socket);
    let d = match decode(&moving.state) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "takeover: could not read a client's session; closing it");
            return;
        }
    };
    let generation = shared.current();
    // As a login resolves it: `[tenants]`, the directory, the template.
    let resolved = generation
        .registry
        .resolve(&generation.config, &d.tenant)
        .await;
    let Ok(mut tenant) = resolved else {
        tracing::warn!(user = %d.user, tenant = %d.tenant,
            "takeover: this process does not serve the client's tenant; closing it");
        return;
    };
    if let Some(keys) = &d.pass_through {
        if generation.config.auth_lookup.is_none() {
            tracing::warn!(user = %d.user, tenant = %d.tenant,
                "takeover: a user found by auth_query, and this process has no [auth]; closing it");
            return;
        }
        tenant = super::auth_query::own_runtime(&generation, &tenant, &d.user, keys, false);
    }
    if shared.clients.contains_key(&d.key) || socket.set_nonblocking(true).is_err() {
        tracing::warn!(user = %d.user, tenant = %d.tenant,
            "takeover: could not take a client over; closing it");
        return;
    }
    let mut ctx = ClientCtx::adopted(
        d.user,
        tenant.clone(),
        d.startup_settings,
        params_of(&d.params),
        params_of(&d.login_params),
        d.key,
    );
    ctx.vs = VSession::import(d.snapshot, d.own_names);
    for (name, sql, types) in d.statements {
        let stmt = super::prepared::server_stmt(tenant.state_id, &sql, &types);
        ctx.stmts.insert(name, Arc::new(stmt));
    }
    tenant.stats.clients.fetch_add(1, Ordering::Relaxed);
    let entry = super::enlist(&ctx, socket.peer_addr().ok(), d.application_name, shared);
    let parked = Parked {
        socket,
        ctx: Box::new(ctx),
        permit: shared.admission.adopt(),
    };
    if let Err(parked) = lot.park(&entry, parked) {
        lot.spawn_resumed(parked, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_states_are_refused() {
        assert!(decode(&[]).is_err());
        assert_eq!(
            decode(&2u32.to_be_bytes()).unwrap_err(),
            BadState("another version of the session state")
        );
        let mut b = Vec::new();
        b.put_u32(VERSION);
        b.put_i32(1);
        b.put_i32(2);
        b.put_u32(u32::MAX);
        assert!(decode(&b).is_err(), "a length past the end");
    }
}
