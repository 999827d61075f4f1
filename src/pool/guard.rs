//! RAII handles: a checked-out connection returns itself on drop; an unused connect permit
//! gives its slot back.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::{Pool, Poolable, TenantId};

/// The result of a checkout.
pub enum Lease<C: Poolable> {
    Ready(Pooled<C>),
    /// The caller must open a connection and [`ConnectPermit::fulfil`] it.
    Connect(ConnectPermit<C>),
}

/// A checked-out connection. Dropping it checks it back in; [`Pooled::discard`] closes it.
pub struct Pooled<C: Poolable> {
    pool: Arc<Pool<C>>,
    tenant: TenantId,
    conn: Option<Box<C>>,
}

impl<C: Poolable> Pooled<C> {
    pub(super) fn new(pool: Arc<Pool<C>>, tenant: TenantId, conn: Box<C>) -> Self {
        Pooled {
            pool,
            tenant,
            conn: Some(conn),
        }
    }

    /// Closes the connection instead of returning it (it is broken or its state unsafe).
    pub fn discard(mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn);
            self.pool.release_slot(self.tenant);
        }
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }
}

impl<C: Poolable> Deref for Pooled<C> {
    type Target = C;
    fn deref(&self) -> &C {
        // Invariant: `conn` is Some until drop/discard consume self.
        self.conn
            .as_ref()
            .expect("pooled connection present until drop")
    }
}

impl<C: Poolable> DerefMut for Pooled<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn
            .as_mut()
            .expect("pooled connection present until drop")
    }
}

impl<C: Poolable> Drop for Pooled<C> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.checkin(self.tenant, conn);
        }
    }
}

/// Permission to open one new connection, counted against the caps until dropped.
pub struct ConnectPermit<C: Poolable> {
    pool: Arc<Pool<C>>,
    tenant: TenantId,
    used: bool,
}

impl<C: Poolable> ConnectPermit<C> {
    pub(super) fn new(pool: Arc<Pool<C>>, tenant: TenantId) -> Self {
        ConnectPermit {
            pool,
            tenant,
            used: false,
        }
    }

    /// Turns a freshly opened connection into a checked-out one.
    pub fn fulfil(mut self, conn: C) -> Pooled<C> {
        self.used = true;
        Pooled::new(self.pool.clone(), self.tenant, Box::new(conn))
    }
}

impl<C: Poolable> Drop for ConnectPermit<C> {
    fn drop(&mut self) {
        if !self.used {
            self.pool.release_slot(self.tenant);
        }
    }
}
