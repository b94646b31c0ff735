//! Fault tests: kill and restart private server instances mid-run; nothing is lost.
