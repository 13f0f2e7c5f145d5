//! Integration tests of image formats, one module per format.

mod fat;
