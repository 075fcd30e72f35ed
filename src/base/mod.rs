pub mod cache;
pub mod fetch;
