// Link-time stand-in for ONNX Runtime's one entry point (see "restr_ort_stub" in CMakeLists.txt):
// never loaded at run time, where the real libonnxruntime.so.1 answers to the same soname.
struct OrtApiBase;
extern "C" const OrtApiBase* OrtGetApiBase() noexcept { return nullptr; }
