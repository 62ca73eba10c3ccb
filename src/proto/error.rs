//! TODO(owner): error
