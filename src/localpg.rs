//! Starting a throwaway local PostgreSQL.
