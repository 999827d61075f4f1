//! `pgtenant demo`.
