// Test tool: reads and writes .tensorbin files with the real ttnn library (PyPI wheel ttnn 0.81.1),
// on the CPU, with no device. It declares only the few functions the library exports that it calls
// (tt-flatbuffer-format.md, section 3); ttnn::Tensor is opaque storage larger than the real object.
//
//   ttnn_tensor_tool read FILE VALUES   prints "dtype layout rank d0 d1 d2 d3" (4-D padded on the left)
//                                       and writes the logical values as float32 to VALUES
//   ttnn_tensor_tool rewrite IN OUT [row_major|tile]
//                                       loads IN and dumps it to OUT (after a layout change, if asked)
#include <array>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <new>
#include <optional>
#include <string>
#include <vector>

namespace ttsl {
template <typename T, typename Tag>
struct StrongType {
    T value;
};
}  // namespace ttsl

namespace tt::tt_metal {
enum class Layout : int { ROW_MAJOR = 0, TILE = 1 };
enum class DataType : int {};
namespace distributed {
class MeshDevice;
}
class Shape {
public:
    size_t rank() const;
    std::array<uint32_t, 4> to_array_4D() const;
};
}  // namespace tt::tt_metal

namespace ttnn {
struct QueueIdTag;
enum class DumpTensorMode : uint8_t { DISTRIBUTED_GATHER = 0, LOCAL = 1 };

class Tensor {
public:
    ~Tensor();
    tt::tt_metal::DataType dtype() const;
    tt::tt_metal::Layout layout() const;
    const tt::tt_metal::Shape& logical_shape() const;
    Tensor to_layout(tt::tt_metal::Layout layout) const;
    template <typename T>
    std::vector<T> to_vector(std::optional<ttsl::StrongType<unsigned char, QueueIdTag>> cq) const;

private:
    alignas(64) unsigned char storage_[4096];
};

Tensor load_tensor_flatbuffer(const std::string& path, tt::tt_metal::distributed::MeshDevice* device);
void dump_tensor_flatbuffer(const std::string& path, const Tensor& tensor, DumpTensorMode mode);
}  // namespace ttnn

static int usage() {
    std::fprintf(stderr, "usage: ttnn_tensor_tool read FILE VALUES | rewrite IN OUT [row_major|tile]\n");
    return 2;
}

static int read_tensor(const char* path, const char* values_path) {
    ttnn::Tensor tensor = ttnn::load_tensor_flatbuffer(path, nullptr);
    const auto& shape = tensor.logical_shape();
    auto dims = shape.to_array_4D();
    std::vector<float> values = tensor.to_vector<float>(std::nullopt);
    std::FILE* out = std::fopen(values_path, "wb");
    if (out == nullptr || std::fwrite(values.data(), sizeof(float), values.size(), out) != values.size()) {
        std::fprintf(stderr, "cannot write %s\n", values_path);
        return 1;
    }
    std::fclose(out);
    std::printf("%d %d %zu %u %u %u %u\n", static_cast<int>(tensor.dtype()) & 0xff,
                static_cast<int>(tensor.layout()) & 0xff, shape.rank(), dims[0], dims[1], dims[2], dims[3]);
    return 0;
}

static int rewrite_tensor(const char* in, const char* out, const char* layout) {
    ttnn::Tensor tensor = ttnn::load_tensor_flatbuffer(in, nullptr);
    if (layout == nullptr) {
        ttnn::dump_tensor_flatbuffer(out, tensor, ttnn::DumpTensorMode::DISTRIBUTED_GATHER);
        return 0;
    }
    std::string wanted(layout);
    if (wanted != "row_major" && wanted != "tile") {
        return usage();
    }
    ttnn::Tensor changed =
        tensor.to_layout(wanted == "tile" ? tt::tt_metal::Layout::TILE : tt::tt_metal::Layout::ROW_MAJOR);
    ttnn::dump_tensor_flatbuffer(out, changed, ttnn::DumpTensorMode::DISTRIBUTED_GATHER);
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        return usage();
    }
    std::string command(argv[1]);
    try {
        if (command == "read" && argc == 4) {
            return read_tensor(argv[2], argv[3]);
        }
        if (command == "rewrite" && (argc == 4 || argc == 5)) {
            return rewrite_tensor(argv[2], argv[3], argc == 5 ? argv[4] : nullptr);
        }
    } catch (const std::exception& exc) {
        std::fprintf(stderr, "ttnn: %s\n", exc.what());
        return 1;
    }
    return usage();
}
