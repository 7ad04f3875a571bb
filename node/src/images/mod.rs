//! Whole images, above the blob transfers: pulling an image with every manifest and blob it
//! needs ([`pull`]), prefetching what trusted publishers announce ([`prefetch`]), recording the
//! tag of an image that registry clients pulled through the gateway ([`tagger`]), and the
//! gateway's view of the node ([`gateway_source`]), which answers from the store and pulls the
//! rest.
//!
//! Not for single blobs (`exchange/fetch/`), nor for the store's own records (`store/`).

pub mod gateway_source;
pub mod prefetch;
pub mod pull;
pub mod tagger;
