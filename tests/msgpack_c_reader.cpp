// Reads a tt-train msgpack file with msgpack-c the way tt-train's MsgPackFile does:
// one map of key -> [variant_index, value], each value converted to the C++ type of
// its variant index (current ValueType order). Prints one line per entry:
// key <TAB> index <TAB> value, with float vectors as the hex bits of each float32.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <msgpack.hpp>

template <typename T>
static void print_vector(const std::vector<T>& values) {
    std::cout << values.size();
    for (const auto& v : values) std::cout << ' ' << +v;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: msgpack_c_reader FILE\n";
        return 2;
    }
    std::ifstream in(argv[1], std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string data = buffer.str();
    try {
        msgpack::object_handle handle = msgpack::unpack(data.data(), data.size());
        const msgpack::object& root = handle.get();
        if (root.type != msgpack::type::MAP) throw std::runtime_error("not a map");
        for (uint32_t i = 0; i < root.via.map.size; ++i) {
            const auto& kv = root.via.map.ptr[i];
            const std::string key = kv.key.as<std::string>();
            const auto& pair = kv.val;
            if (pair.type != msgpack::type::ARRAY || pair.via.array.size != 2) throw std::runtime_error(key);
            const int index = pair.via.array.ptr[0].as<int>();
            const msgpack::object& value = pair.via.array.ptr[1];
            std::cout << key << '\t' << index << '\t';
            switch (index) {
                case 0: std::cout << value.as<bool>(); break;
                case 2: std::cout << value.as<int>(); break;
                case 3: std::cout << value.as<float>(); break;
                case 6: std::cout << value.as<size_t>(); break;
                case 7: std::cout << value.as<std::string>().size(); break;
                case 10: {
                    const auto floats = value.as<std::vector<float>>();
                    std::cout << floats.size();
                    for (float f : floats) {
                        uint32_t bits;
                        std::memcpy(&bits, &f, 4);
                        char hex[10];
                        std::snprintf(hex, sizeof hex, " %08x", bits);
                        std::cout << hex;
                    }
                    break;
                }
                case 12: print_vector(value.as<std::vector<uint8_t>>()); break;
                default: throw std::runtime_error("unexpected variant index for " + key);
            }
            std::cout << '\n';
        }
    } catch (const std::exception& e) {
        std::cerr << "msgpack-c could not read the file: " << e.what() << '\n';
        return 1;
    }
    return 0;
}
