//! TODO(owner): http
