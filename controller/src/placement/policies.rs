//! The policies behind [`super::Policy`] for the live controller.
