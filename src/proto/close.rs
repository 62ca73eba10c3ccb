//! TODO(owner): close
