//! TODO(owner): frame
