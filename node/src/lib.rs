pub mod admin;
pub mod engine;
