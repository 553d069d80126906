package kernels

// ConversionSource exposes the test-only conversion kernels (widen_<dtype>
// and narrow_<dtype> for the 16-bit types) to the external tests.
var ConversionSource = conversionSource
