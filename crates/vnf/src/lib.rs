//! vnf
