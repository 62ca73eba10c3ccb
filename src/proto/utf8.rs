//! TODO(owner): utf8
