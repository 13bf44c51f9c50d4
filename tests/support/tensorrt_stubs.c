/* The C entry points NVIDIA's TensorRT Python bindings (tensorrt_bindings/tensorrt.so)
 * link against, defined to return nothing. Compiled as libnvinfer.so.N,
 * libnvonnxparser.so.N and libnvinfer_plugin.so.N, they let the real bindings import on a
 * machine without TensorRT's libraries or a GPU, so their classes, enums and signatures can
 * be read. Nothing here builds or runs an engine. `nm -D --undefined-only tensorrt.so`
 * lists these names for TensorRT 10.3 and 11.4. */
#include <stddef.h>

void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return NULL; }
int initLibNvInferPlugins(void *logger, const char *library_namespace) { return 0; }
