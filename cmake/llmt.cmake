# llmt_add_test(NAME <name> SOURCES <files...> LIBS <targets...> LABELS <labels...> [TIMEOUT s])
# One GoogleTest binary; each TEST() becomes a ctest entry carrying LABELS
# (unit, integration, reference, gpu, slow) so `ctest -L unit` selects them.
function(llmt_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main GTest::gmock)
  target_compile_definitions(${T_NAME} PRIVATE
    LLMT_SOURCE_DIR="${CMAKE_SOURCE_DIR}" LLMT_BINARY_DIR="${CMAKE_BINARY_DIR}")
  gtest_discover_tests(${T_NAME}
    WORKING_DIRECTORY ${CMAKE_BINARY_DIR}
    TEST_LIST ${T_NAME}_TESTS
    DISCOVERY_TIMEOUT 60)
  # Labels and timeout are set by a script ctest includes after the discovered
  # tests: passing a multi-value LABELS through gtest_discover_tests' PROPERTIES
  # loses every label after the first (and the properties after it).
  set(props ${CMAKE_CURRENT_BINARY_DIR}/${T_NAME}_props.cmake)
  file(WRITE ${props}
       "if(${T_NAME}_TESTS)\n  set_tests_properties(\${${T_NAME}_TESTS} PROPERTIES LABELS \"${T_LABELS}\" TIMEOUT ${T_TIMEOUT})\nendif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${props})
endfunction()

# Adds subdirectory DIR only once its owner has created DIR/CMakeLists.txt.
macro(llmt_optional_subdirectory DIR)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${DIR}/CMakeLists.txt)
    add_subdirectory(${DIR})
  endif()
endmacro()
