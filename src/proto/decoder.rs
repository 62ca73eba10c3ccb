//! TODO(owner): decoder
