//! Integration tests of `ota-core`'s trust layer: adversarial tables named after the
//! attack they mount, root rotation, persistence.

mod attacks;
mod clock;
mod fixtures;
mod image_names;
mod properties;
mod rotation;
mod state_binding;
mod wire_ranges;
