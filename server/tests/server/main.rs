mod api;
mod helpers;
mod mqtt;
mod otactl;
mod store;
