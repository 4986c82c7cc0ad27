enum FrameVectorCases {
    static func all() throws -> ([FrameVector], [InvalidFrameVector]) { ([], []) }
}
